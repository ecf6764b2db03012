"""Does training on the GPU learn? The default recipe with each rollout engine and several seeds, ours against
TRL on the same task, and the sampler gap at the Qwen3-4B shape.

Phases (`--phase`, any of them; results merge into `--json`, default benchmarks/results/learning_gpu.json):

- runs: `mathgrpo train` (the default recipe, nothing changed but the listed settings) for rollout.engine hf
  and native (model.fused_lora true and false; and grpo.sampler_correction none beside the default tis; the hf
  engine with a static cache, rollout.hf_cache=static) with
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
import shutil
import subprocess
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
RUNS_DIR = Path("/tmp/learning-runs")
SEEDS = (0, 1, 2)
VARIANTS = {  # name -> overrides of the default recipe
    "hf": ["rollout.engine=hf"],
    "hf-static": ["rollout.engine=hf", "rollout.hf_cache=static"],
    "native": ["rollout.engine=native", "model.fused_lora=true"],
    "native-inplace": ["rollout.engine=native", "rollout.device_snapshots=false"],  # merged in place, no packed copies
    "native-unfused": ["rollout.engine=native", "model.fused_lora=false"],
    "native-no-tis": ["rollout.engine=native", "model.fused_lora=true", "grpo.sampler_correction=none"],
    "native-fp32": ["rollout.engine=native", "model.dtype=float32"],
    "native-lowrank": ["rollout.engine=native", "rollout.lora=lowrank"],
    "hf-fp16": ["rollout.engine=hf", "model.dtype=float16"],
    "native-fp16": ["rollout.engine=native", "model.fused_lora=true", "model.dtype=float16"],
    "fp8": ["rollout.engine=native", "rollout.precision=fp8"],
    "fp8-kv": ["rollout.engine=native", "rollout.precision=fp8-kv"],
    # decode at the skinny-GEMM kernel's rows (the default recipe rolls out 256 at once, past them); bf16 through it
    # only from packed copies, so those are pinned; native-16 is cuBLAS at those rows
    "native-16": ["rollout.engine=native", "rollout.batch_size=16", "rollout.device_snapshots=true",
                  "rollout.skinny_gemm=false"],
    "native-skinny-16": ["rollout.engine=native", "rollout.batch_size=16", "rollout.device_snapshots=true",
                         "rollout.skinny_gemm=true"],
    "fp8-16": ["rollout.engine=native", "rollout.precision=fp8", "rollout.batch_size=16"],
    "fp8-64": ["rollout.engine=native", "rollout.precision=fp8", "rollout.batch_size=64"],
    # checkpointed training passes (the default recipe's tiny model trains without), keeping the products or not
    "native-ckpt": ["rollout.engine=native", "model.gradient_checkpointing=true", "model.checkpoint_matmuls=false"],
    "native-ckpt-keep": ["rollout.engine=native", "model.gradient_checkpointing=true", "model.checkpoint_matmuls=true"],
    "native-ckpt-auto": ["rollout.engine=native", "model.gradient_checkpointing=true"],  # the memory plan decides
    # log-prob passes packed (each prompt once, no padding) instead of rows (longest first, padded)
    "hf-packed": ["rollout.engine=hf", "grpo.packed_passes=true"],
    "native-packed": ["rollout.engine=native", "grpo.packed_passes=true"],
    "native-compiled": ["rollout.engine=native", "model.compile_layers=true"],
    "native-ckpt-compiled": ["rollout.engine=native", "model.gradient_checkpointing=true", "model.checkpoint_matmuls=false",
                             "model.compile_layers=true"],  # compiled layers run inside checkpointing
    "hf-compiled": ["rollout.engine=hf", "model.compile_layers=true"],  # generation through the layers' own forward
    "native-packed-compiled": ["rollout.engine=native", "grpo.packed_passes=true", "model.compile_layers=true"],
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
        "variant": variant, "engine": "hf" if "rollout.engine=hf" in overrides else "native", "seed": seed,
        "dtype": next((o.split("=")[1] for o in overrides if o.startswith("model.dtype=")), "auto"),
        "precision": next((o.split("=")[1] for o in overrides if o.startswith("rollout.precision=")), "model dtype"),
        "fused_lora": "model.fused_lora=false" not in overrides, "overrides": overrides,
        "accuracy_before": summary.get("accuracy_before_grpo"), "accuracy_after": summary.get("accuracy_after_grpo"),
        "collapse_step": collapse, "max_truncated_fraction": max((r["truncated_fraction"] for r in steps), default=None),
        "sampler_gap_max": max(gaps, default=None), "sampler_gap_mean": sum(means) / len(means) if means else None,
        "heldout_curve": [[r["step"], r["heldout_accuracy"]] for r in rows if "heldout_accuracy" in r],
        "skipped_steps": max((r.get("skipped_steps", 0) for r in steps), default=None),
        "grpo_train_s": sum(r.get("step_time", 0.0) for r in steps), "wall_s": wall, "rc": rc,
        "log_tail": log_tail if rc else "",
    }


def launch(name: str, overrides: list) -> subprocess.Popen:
    """`mathgrpo train` (default recipe) into RUNS_DIR/name with `overrides`, its output to a log file. A folder of
    that name from an earlier call on the same machine is removed first: train would refuse it, and its metrics
    would then be summarised as this run's (seen on a warm machine)."""
    shutil.rmtree(RUNS_DIR / name, ignore_errors=True)
    cmd = [sys.executable, "-m", "mathgrpo", "train", f"run.name={name}", f"run.output_dir={RUNS_DIR}",
           "run.progress=false", *overrides]
    log = open(RUNS_DIR / f"{name}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ.copy())


def phase_runs(args, save) -> dict:
    """Every (variant, seed), `args.parallel` processes at a time; rows saved as they finish. Runs still going at
    `args.deadline` seconds are stopped and reported with rc -9."""
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
        late = time.perf_counter() - T0 > args.deadline
        for name, (proc, variant, seed, overrides, t0) in list(running.items()):
            if late and proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.poll() is None:
                continue
            del running[name]
            tail = (RUNS_DIR / f"{name}.log").read_text()[-2000:]
            rows.append(summarise(name, variant, seed, overrides, time.perf_counter() - t0, proc.returncode, tail))
            print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("heldout_curve", "log_tail")}), flush=True)
            save({"runs": rows, "parallel": args.parallel})
        if late:
            todo = []
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


# ---- ours against TRL -----------------------------------------------------------------------------

def curve_ours(folder: Path) -> list:
    """[[training seconds, held-out accuracy], ...] of a run folder: seconds summed over GRPO steps (evaluation left out)."""
    rows, spent, curve = read_jsonl(folder / "grpo" / "metrics.jsonl"), 0.0, []
    for r in rows:
        spent += r.get("step_time", 0.0)
        if "heldout_accuracy" in r:
            curve.append([spent, r["heldout_accuracy"]])
    return curve


def trl_grpo(sft_dir: Path, eval_every: int) -> dict:
    """TRL's GRPOTrainer + PEFT from the warm-up model with the default recipe's GRPO settings; its curve."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from _rewards import correct_reward, format_reward
    from mathgrpo.config import load_config
    from mathgrpo.data.formats import get_format, render_prompt
    from mathgrpo.evaluation.heldout import heldout_accuracy
    from mathgrpo.model.loading import stop_token_ids
    from mathgrpo.rollout.hf import HFEngine
    from mathgrpo.training.pipeline import load_problems

    cfg = load_config("tiny-cpu")
    g = cfg.grpo
    train, _, test = load_problems(cfg.data)
    model = AutoModelForCausalLM.from_pretrained(sft_dir, dtype=torch.bfloat16).cuda()
    tok = AutoTokenizer.from_pretrained(sft_dir)
    tok.padding_side = "left"
    fmt = get_format(cfg.format.preset)
    data = Dataset.from_dict({"prompt": [render_prompt(p.question, fmt, tok, cfg.format.template) for p in train],
                              "answer": [p.answer for p in train]})
    args = GRPOConfig(
        output_dir="/tmp/trl-learning", per_device_train_batch_size=g.prompts_per_step * g.num_generations,
        gradient_accumulation_steps=1, num_generations=g.num_generations, max_completion_length=cfg.rollout.max_new_tokens,
        max_steps=g.steps, learning_rate=g.lr, lr_scheduler_type="constant", weight_decay=g.weight_decay,
        adam_beta2=0.99, max_grad_norm=g.max_grad_norm, beta=g.beta, loss_type=g.loss_type, epsilon=g.epsilon_low,
        epsilon_high=g.epsilon_high, scale_rewards=g.scale_rewards, temperature=cfg.rollout.temperature,
        reward_weights=[1.0, 0.1], bf16=True, logging_steps=10, report_to="none", save_strategy="no", seed=cfg.run.seed,
        use_vllm=False, dataloader_num_workers=0, gradient_checkpointing=False,
    )
    peft = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, target_modules=list(cfg.lora.target_modules),
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    curve, clock = [], {"spent": 0.0, "since": None}

    def evaluate(trainer_model) -> float:
        engine = HFEngine(trainer_model, tok, stop_token_ids(tok))
        return heldout_accuracy(engine, test, fmt, cfg.format.template, cfg.rollout.max_new_tokens)["accuracy"]

    class Clock(TrainerCallback):
        """Training seconds (synchronised) with held-out accuracy every eval_every steps, the evaluation left out."""

        def on_step_begin(self, a, state, control, model=None, **k):
            torch.cuda.synchronize()
            clock["since"] = time.perf_counter()

        def on_step_end(self, a, state, control, model=None, **k):
            torch.cuda.synchronize()
            clock["spent"] += time.perf_counter() - clock["since"]
            if state.global_step % eval_every == 0 or state.global_step == g.steps:
                curve.append([clock["spent"], evaluate(model)])
                print(f"trl step {state.global_step}: {clock['spent']:.1f} s, held-out {curve[-1][1]:.3f}", flush=True)

    trainer = GRPOTrainer(model=model, reward_funcs=[correct_reward, format_reward], args=args, train_dataset=data,
                          processing_class=tok, peft_config=peft, callbacks=[Clock()])
    curve.append([0.0, evaluate(trainer.model)])
    trainer.train()
    return {"curve_trl": curve}


def time_to_reach(curve: list, target: float):
    """Seconds at the first point of `curve` whose accuracy reaches `target` (None if none does)."""
    return next((t for t, acc in curve if acc >= target), None)


def phase_trl(args) -> dict:
    """Our default run (seed 0, native engine, evaluated every args.eval_every steps), then TRL from its warm-up model."""
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    name = "trl-compare-ours"
    proc = launch(name, VARIANTS["native"] + ["run.seed=0", f"run.eval_every={args.eval_every}"] + args.extra)
    proc.wait()
    ours = curve_ours(RUNS_DIR / name)
    print(f"ours: {ours}", flush=True)
    result = {"eval_every": args.eval_every, "curve_ours": ours, "ours_rc": proc.returncode}
    result.update(trl_grpo(RUNS_DIR / name / "sft" / "model", args.eval_every))
    final_t, final_acc = result["curve_trl"][-1]
    reach = time_to_reach(ours, final_acc)
    result.update({"trl_final_accuracy": final_acc, "trl_seconds": final_t, "ours_seconds_to_trl_final": reach,
                   "time_ratio": reach / final_t if reach is not None and final_t else None})
    return {"trl": result}


# ---- the Qwen3-4B shape ---------------------------------------------------------------------------

def phase_fullshape(args) -> dict:
    """`--steps` GRPO steps of the reference recipe's settings at the Qwen3-4B shape (random bf16 weights), 1,024 new
    tokens, with the `--engine` (native; hf gives the gap of transformers' own generate, the reference): the sampler
    gap of every step."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import grpo_step
    from mathgrpo.config import load_config
    from mathgrpo.data.problem import Problem
    from mathgrpo.training.grpo import GRPORun

    grpo_step.build_and_save()
    new = 1024
    cfg = load_config("qwen3-4b-grpo", [
        f"model.name={grpo_step.MODEL_DIR}", f"model.max_seq_length={grpo_step.PROMPT + new}", "format.template=bare",
        f"rollout.max_new_tokens={new}", f"rollout.engine={args.engine}", "run.progress=false", "run.sample_every=100000",
        "run.report_to=[jsonl]", *args.extra])
    probs = [Problem(id=str(i), question=q, answer="0", source="bench") for i, q in enumerate(grpo_step.prompts(64))]
    run = GRPORun(cfg, Path("/tmp/fullshape-run"), probs, probs[:1])
    run.engine.stop_ids = []  # random weights: every completion runs to its full length
    steps = []
    for _ in range(args.steps):
        m = run.train_step()
        steps.append({k: m.get(k) for k in ("sampler_gap_mean", "sampler_gap_max", "sampler_kl", "step_time",
                                            "completion_length", "peak_memory_gb")})
        print(json.dumps(steps[-1]), flush=True)
    gaps = [s["sampler_gap_max"] for s in steps if s["sampler_gap_max"] is not None]
    key = "fullshape" if args.engine == "native" else f"fullshape_{args.engine}"  # hf: the noise of transformers' own path
    return {key: {"recipe": "qwen3-4b-grpo", "new_tokens": new, "prompts": cfg.grpo.prompts_per_step,
                          "num_generations": cfg.grpo.num_generations, "min_p": cfg.rollout.min_p,
                          "engine": run.engine.name, "steps": steps, "sampler_gap_max": max(gaps, default=None)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase", nargs="+", default=["runs"], choices=["runs", "trl", "fullshape"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--parallel", type=int, default=4, help="runs at a time on the one GPU")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run (key=value)")
    parser.add_argument("--eval-every", type=int, default=20, help="trl phase: held-out accuracy every N steps (both)")
    parser.add_argument("--steps", type=int, default=20, help="fullshape phase: GRPO steps")
    parser.add_argument("--engine", default="native", choices=["native", "hf"], help="fullshape phase: rollout engine")
    parser.add_argument("--deadline", type=float, default=540, help="seconds after which unfinished runs are stopped")
    parser.add_argument("--out", type=Path, default=None, help="also copy the JSON here (the device's $OUT)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/learning_gpu.json")
    args = parser.parse_args()
    update = {"card": card()}

    def save(part: dict) -> None:
        data = merge(args.json, {**update, **part})
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / args.json.name).write_text(json.dumps(data, indent=1))

    if "runs" in args.phase:
        update.update(phase_runs(args, save))
    for name, phase in (("fullshape", phase_fullshape), ("trl", phase_trl)):
        if name in args.phase:
            update.update(phase(args))
            save(update)
    save(update)
    if "runs" in update:
        print_runs(update["runs"])


if __name__ == "__main__":
    main()
