"""The reporting module: notices are printed by the first rank only; bars are silent when disabled."""

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
