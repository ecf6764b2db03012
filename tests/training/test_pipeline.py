"""The real CLI on the tiny model: warm-up then GRPO, a run folder, summary, kill-and-resume, export, solve."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mathgrpo.cli import main
from mathgrpo.tracking import read_jsonl

# Small but real: enough warm-up that GRPO sees both right and wrong answers.
QUICK = [
    "run.threads=1", "run.progress=false", "sft.steps=60", "sft.stop_at_accuracy=null", "sft.batch_size=64",
    "grpo.steps=6", "grpo.prompts_per_step=8", "grpo.num_generations=4", "data.heldout_size=16",
    "run.eval_every=3", "run.checkpoint_every=2", "run.keep_last=10", "run.sample_every=3",
]


def _run_cli(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    return subprocess.Popen([sys.executable, "-m", "mathgrpo", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One uninterrupted quick run of `mathgrpo train`, shared by the tests below."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", *QUICK, f"run.output_dir={root}", "run.name=full"]) == 0
    return root / "full"


@pytest.mark.slow
def test_train_writes_run_folder(finished_run):
    """config, warm-up model, GRPO metrics with every logged quantity, checkpoints and summary."""
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["steps"] == 6
    assert 0 <= summary["accuracy_before_grpo"] <= 1 and 0 <= summary["accuracy_after_grpo"] <= 1
    assert (finished_run / "config.yaml").exists() and (finished_run / "sft" / "model" / "model.safetensors").exists()
    rows = read_jsonl(finished_run / "grpo" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5, 6]
    step = rows[3]
    for key in ("reward", "rewards/correct", "accuracy", "format_rate", "completion_length", "kl", "clip_fraction",
                "grad_norm", "lr", "tokens_per_s", "step_time", "heldout_accuracy", "loss"):
        assert key in step, key
    assert (finished_run / "grpo" / "checkpoints" / "ckpt-000006" / "model" / "adapter_config.json").exists()
    assert read_jsonl(finished_run / "grpo" / "samples.jsonl")


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(finished_run, tmp_path):
    """Kill -9 mid-GRPO, resume: every metric after the last checkpoint equals the uninterrupted run's."""
    proc = _run_cli(["train", *QUICK, f"run.output_dir={tmp_path}", "run.name=killed"], cwd=tmp_path)
    ckpts = tmp_path / "killed" / "grpo" / "checkpoints"
    deadline = time.time() + 300
    while not (ckpts / "ckpt-000002" / "meta.json").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = _run_cli(["train", "--resume", str(tmp_path / "killed")], cwd=tmp_path)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "resumed from" in out
    want = read_jsonl(finished_run / "grpo" / "metrics.jsonl")
    got = read_jsonl(tmp_path / "killed" / "grpo" / "metrics.jsonl")
    timing = lambda k: k.endswith("_time") or k == "tokens_per_s"  # noqa: E731  wall-clock values differ run to run
    clean = lambda rows: [{k: v for k, v in r.items() if not timing(k)} for r in rows]  # noqa: E731
    assert clean(got) == clean(want)


@pytest.mark.slow
def test_export_and_solve_from_run(finished_run, tmp_path, capsys):
    """The finished run exports (adapter + merged) and answers a question through `solve`."""
    assert main(["export", str(finished_run), "--merged", "--out", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "merged" / "model.safetensors").exists()
    assert (tmp_path / "exp" / "adapter" / "adapter_model.safetensors").exists()
    assert main(["solve", "07+28=", "--model", str(finished_run)]) == 0
    out = capsys.readouterr().out
    assert "reasoning:" in out and "answer:" in out


def test_bad_setting_exit_code(capsys):
    """A bad override stops before any work with exit code 2 and the key named."""
    assert main(["train", "grpo.loss_type=ppo"]) == 2
    assert "grpo.loss_type" in capsys.readouterr().err


def test_existing_run_folder_refused(tmp_path, capsys):
    """A new run never writes into a used folder; the message offers --resume."""
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    assert main(["train", f"run.output_dir={tmp_path}", "run.name=x"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_a_source_the_held_out_set_takes_whole_stops_with_what_to_change(tmp_path, capsys, monkeypatch):
    """150 problems and the default 200 held out: nothing left to train on says so (no traceback), names the
    settings to change, and leaves no run folder."""
    bundled = Path(__file__).resolve().parents[2] / "src" / "mathgrpo" / "data" / "bundled" / "gsm8k_test.jsonl"
    (tmp_path / "small.jsonl").write_text("\n".join(bundled.read_text().splitlines()[:150]) + "\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "data.source=small.jsonl", f"run.output_dir={tmp_path / 'runs'}", "run.progress=false"]) == 2
    err = capsys.readouterr().err
    assert "no problems left to train on: data.source=small.jsonl gives 150 [train]" in err
    assert "data.heldout_size below 150 (e.g. 30)" in err and "Traceback" not in err
    assert not list((tmp_path / "runs").iterdir())  # the run folder is gone


def test_the_training_count_says_how_many_problems_are_held_out(tmp_path, capsys, monkeypatch):
    """A file is held-out and training source at once: the line after loading gives the problems GRPO draws from."""
    from mathgrpo.config import load_config
    from mathgrpo.training.pipeline import load_problems

    bundled = Path(__file__).resolve().parents[2] / "src" / "mathgrpo" / "data" / "bundled" / "gsm8k_test.jsonl"
    (tmp_path / "forty.jsonl").write_text("\n".join(bundled.read_text().splitlines()[:40]) + "\n")
    monkeypatch.chdir(tmp_path)
    train, _, test = load_problems(load_config("tiny-cpu", ["data.source=forty.jsonl", "data.heldout_size=8"]).data)
    assert (len(train), len(test)) == (32, 8) and not {p.question for p in train} & {p.question for p in test}
    assert "data: 32 problems to train on (8 of the 40 are held out)" in capsys.readouterr().out


@pytest.mark.slow
def test_nan_loss_stops_with_advice_after_saving(tmp_path, capsys):
    """An absurd learning rate makes the loss NaN: exit 1, advice, and a checkpoint of the state the step started from."""
    import torch

    args = [a for a in QUICK if not a.startswith("grpo.steps")]
    assert main(["train", *args, "grpo.steps=5", "grpo.lr=1e30", f"run.output_dir={tmp_path}", "run.name=nan"]) == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "Lower grpo.lr" in err and "--resume" in err and "state before this step" in err
    ckpts = sorted((tmp_path / "nan" / "grpo" / "checkpoints").glob("ckpt-*"))
    state = torch.load(ckpts[-1] / "state.pt", weights_only=False)
    # the data position is that of the last finished step, not of the one that failed
    assert state["extra"]["order"]["pos"] == 8 * state["step"]
    assert f"step {state['step'] + 1}:" in err


@pytest.mark.slow
def test_ctrl_c_stops_at_a_step_boundary_and_resumes_exactly(finished_run, tmp_path):
    """SIGINT mid-GRPO: exit code 130 after saving the step reached; --resume then matches the uninterrupted run."""
    proc = _run_cli(["train", *QUICK, f"run.output_dir={tmp_path}", "run.name=int"], cwd=tmp_path)
    metrics = tmp_path / "int" / "grpo" / "metrics.jsonl"
    deadline = time.time() + 300
    while len(read_jsonl(metrics)) < 3:  # the start row and two steps
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted; saved" in out and "--resume" in out
    resumed = _run_cli(["train", "--resume", str(tmp_path / "int")], cwd=tmp_path)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "s this time, " in out and " s over the run)" in out  # this command's time, not the run's total
    clean = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_time") and k != "tokens_per_s"} for r in rows]  # noqa: E731
    assert clean(read_jsonl(metrics)) == clean(read_jsonl(finished_run / "grpo" / "metrics.jsonl"))


@pytest.mark.slow
def test_train_output_warns_and_names_the_next_command(tmp_path):
    """A real `mathgrpo train`: a warm-up far below its target is flagged before GRPO, the eval command is
    printed at the end, and transformers' own load/save bars stay out of the output."""
    proc = _run_cli(["train", "run.threads=1", "sft.steps=10", "sft.eval_every=5", "grpo.steps=1",
                     "data.heldout_size=8", "grpo.prompts_per_step=2", "grpo.num_generations=2",
                     f"run.output_dir={tmp_path}", "run.name=r"], cwd=tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert out.index("warning: the warm-up ended at") < out.index("grpo ")
    assert f"next: mathgrpo eval --model {tmp_path / 'r'} --bench procedural:arith@test\n" in out
    assert "Loading weights" not in out and "Writing model shards" not in out
