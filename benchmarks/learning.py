"""Does training on the GPU learn? The default recipe with each rollout engine and several seeds, ours against
TRL on the same task, and the sampler gap at the Qwen3-4B shape.

Phases (`--phase`, any of them; results merge into `--json`, default benchmarks/results/learning_gpu.json):

- runs: `mathgrpo train` (the default recipe, nothing changed but the listed settings) for rollout.engine hf
  and native (model.fused_lora true and false; and grpo.sampler_correction none beside the default tis) with
  seeds 0, 1, 2, as separate processes, `--parallel` at a time on the one GPU (their wall times are those of
  runs sharing it). Each run: held-out accuracy before and after GRPO, the first step whose truncated fraction
  passes 0.3 (`collapse_step`: the model stopped ending its answers), the largest sampler gap of the run.
- trl: TRL's GRPOTrainer + PEFT from the same warm-up model (a `runs` run folder's sft/model), same data,
  reward, group size, learning rate, LoRA rank and steps; held-out accuracy against training seconds
  (evaluation time left out) for both; `time_ratio` = our seconds to reach TRL's final accuracy / TRL's.
- fullshape: 20 GRPO steps at the Qwen3-4B shape (random bf16 weights), the reference recipe's settings,
  1,024 new tokens, native engine; the sampler gap of every step.

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/learning.py --phase runs --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS_DIR = Path("/tmp/learning-runs")
SEEDS = (0, 1, 2)
VARIANTS = {  # name -> overrides of the default recipe
    "hf": ["rollout.engine=hf"],
    "native": ["rollout.engine=native", "model.fused_lora=true"],
    "native-unfused": ["rollout.engine=native", "model.fused_lora=false"],
    "native-no-tis": ["rollout.engine=native", "model.fused_lora=true", "grpo.sampler_correction=none"],
}


def card() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def summarise(name: str, variant: str, seed: int, overrides: list, wall: float, rc: int, log_tail: str) -> dict:
    """One run's row from its run folder (metrics.jsonl, summary.json)."""
    folder = RUNS_DIR / name
    rows = read_jsonl(folder / "grpo" / "metrics.jsonl")
    steps = [r for r in rows if r.get("step", 0) > 0 and "truncated_fraction" in r]
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else {}
    collapse = next((r["step"] for r in steps if r["truncated_fraction"] > 0.3), None)
    gaps = [r["sampler_gap_max"] for r in steps if "sampler_gap_max" in r]
    means = [r["sampler_gap_mean"] for r in steps if "sampler_gap_mean" in r]
    return {
        "variant": variant, "engine": "hf" if variant == "hf" else "native", "seed": seed,
        "fused_lora": "model.fused_lora=false" not in overrides, "overrides": overrides,
        "accuracy_before": summary.get("accuracy_before_grpo"), "accuracy_after": summary.get("accuracy_after_grpo"),
        "collapse_step": collapse, "max_truncated_fraction": max((r["truncated_fraction"] for r in steps), default=None),
        "sampler_gap_max": max(gaps, default=None), "sampler_gap_mean": sum(means) / len(means) if means else None,
        "heldout_curve": [[r["step"], r["heldout_accuracy"]] for r in rows if "heldout_accuracy" in r],
        "grpo_train_s": sum(r.get("step_time", 0.0) for r in steps), "wall_s": wall, "rc": rc,
        "log_tail": log_tail if rc else "",
    }


def launch(name: str, overrides: list) -> subprocess.Popen:
    """`mathgrpo train` (default recipe) into RUNS_DIR/name with `overrides`, its output to a log file."""
    cmd = [sys.executable, "-m", "mathgrpo", "train", f"run.name={name}", f"run.output_dir={RUNS_DIR}",
           "run.progress=false", *overrides]
    log = open(RUNS_DIR / f"{name}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ.copy())


def phase_runs(args) -> dict:
    """Every (variant, seed), `args.parallel` processes at a time; rows as they finish."""
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    todo = [(v, s) for v in args.variants for s in args.seeds]
    running, rows = {}, []
    while todo or running:
        while todo and len(running) < args.parallel:
            variant, seed = todo.pop(0)
            name = f"{variant}-s{seed}"
            overrides = VARIANTS[variant] + [f"run.seed={seed}"] + args.extra
            running[name] = (launch(name, overrides), variant, seed, overrides, time.perf_counter())
        time.sleep(1)
        for name, (proc, variant, seed, overrides, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            tail = (RUNS_DIR / f"{name}.log").read_text()[-2000:]
            rows.append(summarise(name, variant, seed, overrides, time.perf_counter() - t0, proc.returncode, tail))
            print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("heldout_curve", "log_tail")}), flush=True)
    return {"runs": rows, "parallel": args.parallel}


def print_runs(rows: list) -> None:
    print(f"{'variant':16} {'seed':>4} {'before':>7} {'after':>7} {'collapse':>8} {'gap max':>8} {'gap mean':>9} {'wall s':>7} rc")
    for r in sorted(rows, key=lambda r: (r["variant"], r["seed"])):
        f = lambda x, p=3: "-" if x is None else f"{x:.{p}f}"  # noqa: E731
        print(f"{r['variant']:16} {r['seed']:>4} {f(r['accuracy_before'])} {f(r['accuracy_after'])} "
              f"{str(r['collapse_step']):>8} {f(r['sampler_gap_max'], 4):>8} {f(r['sampler_gap_mean'], 5):>9} "
              f"{r['wall_s']:7.0f} {r['rc']}")


def merge(path: Path, update: dict) -> dict:
    """The JSON at `path` with `update`'s keys replaced (runs of the same variant and seed replaced one by one)."""
    data = json.loads(path.read_text()) if path.exists() else {}
    if "runs" in update:
        fresh = {(r["variant"], r["seed"]) for r in update["runs"]}
        update = {**update, "runs": [r for r in data.get("runs", []) if (r["variant"], r["seed"]) not in fresh] + update["runs"]}
    data.update(update)
    path.write_text(json.dumps(data, indent=1))
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase", nargs="+", default=["runs"], choices=["runs", "trl", "fullshape"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--parallel", type=int, default=4, help="runs at a time on the one GPU")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run (key=value)")
    parser.add_argument("--out", type=Path, default=None, help="also copy the JSON here (the device's $OUT)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/learning_gpu.json")
    args = parser.parse_args()
    update = {"card": card()}
    if "runs" in args.phase:
        update.update(phase_runs(args))
    data = merge(args.json, update)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / args.json.name).write_text(json.dumps(data, indent=1))
    if "runs" in update:
        print_runs(update["runs"])


if __name__ == "__main__":
    main()
