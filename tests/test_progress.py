"""The reporting module: notices are printed by the first rank only; bars are silent when disabled."""

import sys
import warnings

import rich
import rich.console

from mathgrpo import dist, progress
from mathgrpo.progress import notice


def test_a_notice_is_printed_on_the_first_rank_only(capsys, monkeypatch):
    notice("rollout: using hf")
    assert capsys.readouterr().out == "rollout: using hf\n"
    monkeypatch.setattr(dist, "_WORLD", dist.World(rank=1, size=2))
    notice("rollout: using hf")
    assert capsys.readouterr().out == ""


def test_bars_are_silent_when_disabled(capsys):
    bar = progress.StepProgress("grpo", 3, enabled=False)
    bar.update(1, "reward 0.5")
    bar.close()
    with progress.task_progress(False) as bars:
        bars.advance(bars.add_task("gsm8k", total=2), 2)
    assert capsys.readouterr().out == ""


def test_jupyter_without_ipywidgets_gets_bars_without_warnings(capsys, monkeypatch):
    """rich redraws bars in Jupyter through ipywidgets only; without them it warned at every redraw and drew nothing
    (about 30 warnings in one GPU notebook run). Then the bar is printed once, when it ends, and nothing warns."""
    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)
    monkeypatch.setattr(rich, "_console", None)  # rich's shared console, made by an earlier test outside Jupyter
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets fails as if it were not installed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bar = progress.StepProgress("grpo", 3)
        bar.update(3, "reward 0.5")
        bar.close()
        with progress.task_progress(True) as bars:
            bars.advance(bars.add_task("gsm8k", total=2), 2)
    assert not [w for w in caught if "ipywidgets" in str(w.message)]
    out = capsys.readouterr().out
    assert "grpo" in out and "3/3" in out and "reward 0.5" in out and "gsm8k" in out
