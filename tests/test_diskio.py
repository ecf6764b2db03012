"""Failed writes: one line naming the path, nothing half-written left, and the next run goes on."""

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mathgrpo.cli import main
from mathgrpo.diskio import WriteError, writing

SRC = str(Path(__file__).resolve().parents[1] / "src")
SMALL = ["run.threads=1", "run.progress=false", "sft.steps=4", "sft.stop_at_accuracy=null", "grpo.steps=2",
         "data.heldout_size=4", "run.checkpoint_every=2", "grpo.prompts_per_step=2", "grpo.num_generations=2"]


def test_unwritable_output_folder_is_one_line(tmp_path, capsys):
    """/sys refuses new folders even to root: the line names the folder and what to do."""
    assert main(["train", "run.output_dir=/sys/mathgrpo-test"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mathgrpo train: cannot write /sys/mathgrpo-test") and "run.output_dir" in err
    assert len(err.splitlines()) == 1
    (tmp_path / "file").write_text("")
    assert main(["eval", "--model", "tiny", "--output", str(tmp_path / "file" / "res")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_a_failed_torch_write_names_the_path_and_removes_the_temporary(tmp_path):
    tmp = tmp_path / ".half"
    with pytest.raises(WriteError, match=r"cannot write .*state.pt: .*unexpected pos .*GiB free there"):
        with writing(tmp_path / "state.pt", tmp):
            tmp.mkdir()
            (tmp / "part").write_text("half")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert not tmp.exists()
    with pytest.raises(KeyboardInterrupt):  # not a write failure: passes through, after the clean-up
        with writing(tmp_path / "x", tmp):
            tmp.mkdir()
            raise KeyboardInterrupt
    assert not tmp.exists()


def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_a_full_disk_mid_run_is_one_line_and_resume_finishes(tmp_path):
    """Files over 1 MB fail to write (as on a full disk): exit 1, one line, no temporary folder; --resume completes."""
    env = {**os.environ, "PYTHONPATH": SRC}
    run = tmp_path / "a"
    cmd = [sys.executable, "-m", "mathgrpo", "train", *SMALL, f"run.output_dir={tmp_path}", "run.name=a"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=_file_size_limit(1_000_000))
    assert proc.returncode == 1, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("mathgrpo")]
    assert lines and "cannot write" in lines[0] and str(run) in lines[0] and "--resume" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not [p for p in run.rglob(".*") if p.name != ".config.yaml"], list(run.rglob(".*"))
    proc = subprocess.run([sys.executable, "-m", "mathgrpo", "train", "--resume", str(run)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert torch.load(next((run / "grpo" / "checkpoints").glob("ckpt-*")) / "state.pt", weights_only=False)["step"] == 2
