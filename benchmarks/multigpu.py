"""Data-parallel scaling of a GRPO step: the same global batch on 1, 2, ... GPUs of one host.

Subject: a Qwen3-4B-shaped model with random bf16 weights (`model.init=random`), LoRA r32, GSM8K
prompts in the plain template, 8 prompts x 8 samples, 256 new tokens, the default rollout engine.
Each rank count runs `torchrun -m mathgrpo train` for a few steps; the first step (graph capture,
compilation) is left out and a step's time is the median of the others (a step whose micro-batches
meet new shapes compiles Triton kernels; `--warmup` runs one untimed single-GPU run first so that
every row finds them compiled on disk). Strong scaling (same global batch): efficiency =
t(1) / (N x t(N)). Weak scaling (`--weak`, N x 8 prompts on N GPUs, the same work per rank):
efficiency = t(1) / t(N). `--fsdp` runs those rank counts again with `run.parallel=fsdp`.

    python benchmarks/multigpu.py --gpus 1,2,4 --weak 4 --fsdp 4 --out benchmarks/results/multigpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))


def write_model_folder(path: Path, smoke: bool = False) -> None:
    """config.json of the Qwen3-4B shape (a 2-layer one for --smoke) and a tokenizer of 151,936 ids (no weights)."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config

    from _subject import QWEN3_4B

    cfg = Qwen3Config(**QWEN3_4B, eos_token_id=1, pad_token_id=0)
    if smoke:
        cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.head_dim = 64, 128, 2, 16
        cfg.num_attention_heads, cfg.num_key_value_heads = 4, 2
        cfg.layer_types = cfg.layer_types[:2]
    cfg.save_pretrained(path)
    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    names = ["<pad>", "<eos>", "<unk>"] + chars
    names += [f"<t{i}>" for i in range(cfg.vocab_size - len(names))]
    core = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(names)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>").save_pretrained(path)


def run_ranks(n: int, model_dir: Path, out: Path, steps: int, extra: list, parallel: str = "ddp",
              prompts: int = 8, timeout: float = 240) -> dict:
    """One `mathgrpo train` on n GPUs; its per-step metrics after the first step."""
    name = f"gpus{n}-{parallel}-p{prompts}"
    row = {"gpus": n, "parallel": parallel, "prompts": prompts}
    overrides = [
        f"model.name={model_dir}", "model.init=random", "sft.enabled=false", "data.source=gsm8k",
        "data.heldout_size=8", "format.template=plain", "rollout.max_new_tokens=256", "rollout.min_p=0.0",
        f"grpo.steps={steps}", f"grpo.prompts_per_step={prompts}", f"run.parallel={parallel}", "grpo.num_generations=8", "rewards.preset=default",
        f"run.eval_every={10 * steps}", f"run.checkpoint_every={10 * steps}", "run.progress=false",
        "run.report_to=[jsonl]", f"run.output_dir={out}", f"run.name={name}", *extra,
    ]
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "NCCL_NVLS_ENABLE": "0", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           "-m", "mathgrpo", "train", "--recipe", "qwen3-4b-grpo", *overrides]
    t0 = time.time()
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        (out / f"{name}.log").write_text(text)
        return {**row, "error": f"timed out after {timeout:.0f} s: " + text[-1200:]}
    (out / f"{name}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        return {**row, "error": (done.stdout + done.stderr)[-1500:]}
    rows = [json.loads(x) for x in (out / name / "grpo" / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r.get("step", 0) >= 2 and "step_time" in r]
    median = lambda k: statistics.median(r[k] for r in timed)  # noqa: E731 - a step meeting new shapes compiles kernels
    return {**row, "steps_timed": len(timed), "step_s": median("step_time"), "rollout_s": median("rollout_time"),
            "tokens_per_s": median("tokens_per_s"), "step_times": [round(r["step_time"], 3) for r in timed],
            "wall_s": time.time() - t0}


def score(rows: list) -> None:
    """Speed-up and efficiency of each row against the one-GPU ddp row at 8 prompts."""
    base = next((r for r in rows if r["gpus"] == 1 and r["parallel"] == "ddp" and r["prompts"] == 8
                 and "step_s" in r), None)
    for r in rows:
        if base and "step_s" in r:
            work = r["prompts"] / base["prompts"]
            r["speedup"] = work * base["step_s"] / r["step_s"]
            r["efficiency"] = r["speedup"] / r["gpus"]


def main() -> None:
    """Run every rank count, compute scaling efficiency, write the JSON, print a table."""
    p = argparse.ArgumentParser()
    p.add_argument("--gpus", default="1,2", help="rank counts, same global batch (8 prompts)")
    p.add_argument("--weak", default="", help="rank counts run with 8 prompts per rank")
    p.add_argument("--fsdp", default="", help="rank counts run again with run.parallel=fsdp (8 prompts)")
    p.add_argument("--warmup", action="store_true", help="an untimed one-GPU run first (compiles kernels)")
    p.add_argument("--timeout", type=float, default=240, help="seconds one torchrun may take")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--out", default="benchmarks/results/multigpu.json")
    p.add_argument("--work", default="/tmp/mathgrpo-multigpu")
    p.add_argument("--smoke", action="store_true", help="a 2-layer model on the CPU (gloo): checks the plumbing")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    write_model_folder(work / "qwen3-4b-shape", args.smoke)
    extra = ["model.device=cpu", "model.dtype=float32", "rollout.max_new_tokens=8", "run.threads=1"] if args.smoke else []
    plan = [(int(n), "ddp", 8) for n in args.gpus.split(",") if n]
    plan += [(int(n), "ddp", 8 * int(n)) for n in args.weak.split(",") if n]
    plan += [(int(n), "fsdp", 8) for n in args.fsdp.split(",") if n]
    if args.warmup:
        (work / "warmup").mkdir(exist_ok=True)
        run_ranks(1, work / "qwen3-4b-shape", work / "warmup", min(args.steps, 4), extra, timeout=args.timeout)
    rows = []
    for n, parallel, prompts in plan:
        rows.append(run_ranks(n, work / "qwen3-4b-shape", work, args.steps, extra, parallel, prompts, args.timeout))
        score(rows)
        write_report(rows, Path(args.out))
    print(f"{'gpus':>4} {'mode':>5} {'prompts':>7} {'step s':>8} {'rollout s':>10} {'tok/s':>8} {'speedup':>8} {'eff':>6}")
    for r in rows:
        head = f"{r['gpus']:>4} {r['parallel']:>5} {r['prompts']:>7}"
        if "error" in r:
            print(f"{head} error: {r['error'][-300:]}")
            continue
        print(f"{head} {r['step_s']:>8.2f} {r['rollout_s']:>10.2f} {r['tokens_per_s']:>8.0f} "
              f"{r.get('speedup', 0):>8.2f} {r.get('efficiency', 0):>6.2f}")


def write_report(rows: list, out: Path) -> None:
    """The JSON of every row so far (written after each run, so a cut-off call keeps what it measured)."""
    import torch

    # nvidia-smi rather than torch.cuda: a CUDA context in this process would sit on GPU 0 during the runs.
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                         check=False) \
        if shutil.which("nvidia-smi") else None
    cards = smi.stdout.split("\n") if smi and smi.returncode == 0 else []
    cards = [c.strip() for c in cards if c.strip()]
    report = {"card": cards[0] if cards else "cpu", "gpus_visible": len(cards), "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__,
              "subject": "Qwen3-4B shape, random bf16, LoRA r32, 8 samples per prompt, GSM8K prompts, 256 new tokens; "
                         "8 prompts a step (strong scaling) or 8 per rank (weak)",
              "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
