"""Run folders: claimed exclusively, named safely."""

import threading

import pytest

from mathgrpo.cli import main
from mathgrpo.config import load_config
from mathgrpo.runs import RunError, new_run_dir


def test_runs_started_in_the_same_second_never_share_a_folder(tmp_path):
    """Eight runs with default names claim folders at once: eight folders, each with its config."""
    cfg = load_config("tiny-cpu", [f"run.output_dir={tmp_path}"])
    got, start = [], threading.Barrier(8)

    def claim():
        start.wait()
        got.append(new_run_dir(cfg, "tiny-cpu"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 8
    assert all(sorted(p.name for p in path.iterdir()) == ["config.yaml"] for path in got)


def test_a_taken_run_name_is_refused_and_an_empty_folder_taken(tmp_path):
    cfg = load_config("tiny-cpu", [f"run.output_dir={tmp_path}", "run.name=x"])
    (tmp_path / "x").mkdir()
    assert new_run_dir(cfg, None) == tmp_path / "x"
    with pytest.raises(RunError, match="--resume"):
        new_run_dir(cfg, None)


@pytest.mark.parametrize("name", ["a/b", "../escaped", "/tmp/abs", ".."])
def test_run_name_must_be_one_folder_name(tmp_path, capsys, name):
    """run.name with a path in it is refused before anything is written, inside or outside output_dir."""
    out = tmp_path / "runs"
    assert main(["train", f"run.output_dir={out}", f"run.name={name}"]) == 2
    assert "run.name" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())

