"""Data parallelism: two gloo ranks under torchrun give the same run as one process with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mathgrpo.tracking import read_jsonl

WARMUP = ["run.threads=1", "run.progress=false", "sft.steps=60", "sft.stop_at_accuracy=null", "sft.batch_size=64"]
# GRPO from one shared warmed-up model: Adam amplifies float-rounding differences in near-zero
# gradients, so comparing two warm-ups too would compare rounding, not the parallelism.
SETTINGS = [
    "run.threads=1", "run.progress=false", "sft.enabled=false", "grpo.steps=4", "grpo.prompts_per_step=8", "grpo.num_generations=4", "data.heldout_size=10",
    "run.eval_every=2", "run.checkpoint_every=2",
    "grpo.scale_rewards=batch",  # the one advantage scaling that needs the other ranks' rewards
]
# Per-rank or wall-clock quantities: everything else must agree.
LOCAL = ("tokens_per_s", "micro_batch_size", "peak_memory_gb")


def _compared(row):
    return {k for k in row if k not in LOCAL and not k.endswith("_time")}


def _run(launcher, out, name, settings):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, *launcher, "-m", "mathgrpo", "train", *settings, f"run.output_dir={out}", f"run.name={name}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / name


# Rounding-level quantities (the learner against the engine, ~1e-6 in fp32): their values depend on how the batch
# is split, so they agree only to rounding.
ROUNDING = ("sampler_gap_mean", "sampler_gap_max", "sampler_kl")


def _close(a, b, key=""):
    if key in ROUNDING:
        return abs(a - b) < 1e-4
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-4, abs=1e-6)
    return a == b


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """(settings, run folder): one process's GRPO run from a shared warmed-up model."""
    root = tmp_path_factory.mktemp("dist")
    warm = _run([], root, "warm", [*WARMUP, "grpo.enabled=false"]) / "sft" / "model"
    settings = [*SETTINGS, f"model.name={warm}"]
    return settings, _run([], root, "single", settings)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_ranks_equal_one_process(single, tmp_path, parallel):
    """Metrics at every step and the final adapter agree to float tolerance; rank 0 alone wrote files."""
    settings, single = single
    ddp = _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"], tmp_path, "ddp",
               [*settings, f"run.parallel={parallel}"])
    want, got = read_jsonl(single / "grpo" / "metrics.jsonl"), read_jsonl(ddp / "grpo" / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [0, 1, 2, 3, 4]
    for w, g in zip(want, got):
        for key in _compared(w):
            assert _close(g[key], w[key], key), (w["step"], key, g[key], w[key])
    a = load_file(single / "grpo" / "checkpoints" / "ckpt-000004" / "model" / "adapter_model.safetensors")
    b = load_file(ddp / "grpo" / "checkpoints" / "ckpt-000004" / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert not list((ddp / "grpo" / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_resume_on_another_rank_count(single, tmp_path, parallel):
    """Two ranks stop at step 2; one process resumes to step 4 and lands where one process alone does."""
    settings, single = single
    half = _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"], tmp_path, "half",
                [*settings, "grpo.steps=2", f"run.parallel={parallel}"])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run([sys.executable, "-m", "mathgrpo", "train", "--resume", str(half), "grpo.steps=4", "run.parallel=ddp"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    want, got = read_jsonl(single / "grpo" / "metrics.jsonl"), read_jsonl(half / "grpo" / "metrics.jsonl")
    assert [r["step"] for r in got] == [0, 1, 2, 3, 4]
    for w, g in zip(want[3:], got[3:]):
        for key in _compared(w):
            assert _close(g[key], w[key], key), (w["step"], key, g[key], w[key])


@pytest.mark.slow
def test_eval_shards_and_gathers(tmp_path):
    """Two ranks split the problems, rank 0 writes every sample once: same verdicts as one process."""
    from mathgrpo.model.tiny import build_tiny

    model, tok = build_tiny(0)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    args = ["-m", "mathgrpo", "eval", "--model", str(tmp_path / "tiny"), "--bench", "gsm8k", "--limit", "5",
            "rollout.max_new_tokens=8", "run.progress=false", "run.threads=1"]
    outs = {}
    for name, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"])):
        done = subprocess.run([sys.executable, *launcher, *args, "--output", str(tmp_path / name)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        rows = read_jsonl(tmp_path / name / "samples.jsonl")
        outs[name] = sorted((r["id"], r["completion"], r["correct"]) for r in rows)
    assert len(outs["two"]) == 5 and outs["two"] == outs["one"]


@pytest.mark.slow
def test_every_exit_path_leaves_the_process_group(tmp_path):
    """Under torchrun, a finished and a failed command both destroy the process group before returning."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\nimport torch.distributed as d\nfrom mathgrpo.cli import main\n"
        "rc = main(sys.argv[1:])\nprint(f'rc={rc} group={\"alive\" if d.is_initialized() else \"gone\"}', flush=True)\n"
        "sys.exit(0)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    base = ["eval", "--model", "tiny", "--limit", "2", "rollout.max_new_tokens=4", "run.progress=false", "run.threads=1"]
    for bench, rc in (("gsm8k", 0), ("no_such_source", 2)):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               str(script), *base, "--bench", bench, "--output", str(tmp_path / bench)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert done.stdout.count(f"rc={rc} group=gone") == 2, done.stdout[-2000:] + done.stderr[-2000:]
        assert "destroy_process_group" not in done.stderr
