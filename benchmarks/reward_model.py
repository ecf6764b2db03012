"""What a learned reward costs: GRPO steps with and without `rewards.model`, side by side in one run.

Subject: the Qwen3-4B-shaped policy with random bf16 weights (`grpo_step.py`'s folder, built on the GPU
once), and a sequence classifier of Qwen2.5-1.5B's shape (hidden 1536, 28 layers, 12 query / 2 key-value
heads, intermediate 8960, vocabulary 151,936, tied embeddings, one label; 1.54B parameters) with random
bf16 weights, saved to a folder so that the run loads it through `rewards.model` as a user's would.
Settings: the reference recipe (`recipes/qwen3-4b-grpo.yaml`: LoRA r32, 4 prompts x 4 samples, 1,024 new
tokens, temperature 1.0, min_p 0.1, the unsloth reward preset), 256-token prompts, completions forced to
their full length (no stop ids), the reward model at its default settings (8 texts a pass, 2,048 tokens,
group normalisation).

Each variant runs in its own process (peak memory per process), `--steps` steps each: the first step
(compilation, graph capture) and the warm ones are reported, with the reward model's scoring time per
step (its forward passes, the GPU finished) and the peak memory of a step. A short table is printed last.

    PYTHONUNBUFFERED=1 PYTHONPATH=src python benchmarks/reward_model.py --json benchmarks/results/reward_model.json
    PYTHONPATH=src python benchmarks/reward_model.py --tiny    # tiny policy + tiny classifier on the CPU, 2 steps
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RM_DIR = "/tmp/rm-1.5b-random-qwen3"
TINY_RM_DIR = str(Path(tempfile.gettempdir()) / "rm-tiny-bench")
# Qwen2.5-1.5B's shape as a one-label Qwen3 sequence classifier (Qwen3 adds only the q/k norms, 256 weights a
# layer): with a qwen2 config.json, transformers 5 loads the made-up word-level tokenizer as Qwen2's BPE, which
# turns the benchmark's texts into no tokens.
QWEN25_15B = {
    "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "head_dim": 128, "tie_word_embeddings": True, "rope_theta": 1e6,
    "max_position_embeddings": 32768, "num_labels": 1,
}


def build_classifier(tiny: bool) -> dict:
    """Random classifier weights saved with a tokenizer (once per machine); returns what was saved."""
    import torch

    folder = TINY_RM_DIR if tiny else RM_DIR
    if (Path(folder) / "config.json").exists():
        return {"classifier": folder, "reused": True}
    if tiny:
        from mathgrpo.model.tiny import build_tiny_classifier

        model, tok = build_tiny_classifier(seed=1)
    else:
        from transformers import Qwen3Config, Qwen3ForSequenceClassification

        from grpo_step import build_tokenizer

        with torch.device("cuda"):
            model = Qwen3ForSequenceClassification(Qwen3Config(**QWEN25_15B, pad_token_id=0, eos_token_id=1,
                                                               bos_token_id=None)).to(torch.bfloat16)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" not in name:
                    p.normal_(0, 0.02)
        tok = build_tokenizer(QWEN25_15B["vocab_size"])
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the run loads its own copy from the folder
    return {"classifier": folder, "params": params}


def make_run(tiny: bool, with_rm: bool, steps: int):
    """A GRPORun at the reference recipe's settings (or the tiny recipe's, smaller) and its problems."""
    from mathgrpo.config import load_config
    from mathgrpo.data.problem import Problem
    from mathgrpo.training.grpo import GRPORun

    common = ["run.progress=false", "run.sample_every=100000", f"grpo.steps={steps}"]
    built = build_classifier(tiny) if with_rm else {}
    rm = [f"rewards.model={built['classifier']}"] if with_rm else []
    if tiny:
        from mathgrpo.data.arith import split

        cfg = load_config("tiny-cpu", [*common, *rm, "model.device=cpu", "grpo.prompts_per_step=4",
                                       "grpo.num_generations=4", "rollout.max_new_tokens=24"])
        problems = split(0)[0][:64]
    else:
        from grpo_step import MODEL_DIR, NEW, build_and_save, prompts

        build_and_save()
        cfg = load_config("qwen3-4b-grpo", [*common, *rm, f"model.name={MODEL_DIR}", "format.template=bare",
                                            f"rollout.max_new_tokens={NEW}"])  # 1,024 as the recipe; prompts of PROMPT
        problems = [Problem(id=str(i), question=q, answer="0", source="bench") for i, q in enumerate(prompts(64))]
    run = GRPORun(cfg, Path(tempfile.mkdtemp(prefix="rm-bench-")), problems, problems[:1])
    run.engine.stop_ids = []  # completions at their full length (the native engine; hf keeps its stop ids)
    return run, cfg, built


def variant(tiny: bool, with_rm: bool, steps: int) -> dict:
    """`steps` GRPO steps with or without the reward model; per-step times, scoring time and peak memory."""
    import torch

    t0 = time.perf_counter()
    run, cfg, built = make_run(tiny, with_rm, steps)
    setup = time.perf_counter() - t0
    rows = []
    for _ in range(steps):
        m = run.train_step()
        scorer = run.rewards.scorer
        rows.append({"step_time": m["step_time"], "rollout_time": m["rollout_time"],
                     "reward_model_time": scorer.seconds if scorer else 0.0, "peak_memory_gb": m.get("peak_memory_gb"),
                     "completion_length": m["completion_length"], "micro_batch_size": m.get("micro_batch_size"),
                     "rewards/reward_model": m.get("rewards/reward_model")})
        print(rows[-1], flush=True)
    plan = run.sizing.plan
    card = torch.cuda.get_device_name(0) if run.device.type == "cuda" else "CPU"
    return {"variant": "with rewards.model" if with_rm else "without", "card": card, "classifier": built,
            "setup_s": setup, "steps": rows,
            "completions_per_step": cfg.grpo.prompts_per_step * cfg.grpo.num_generations,
            "new_tokens": cfg.rollout.max_new_tokens, "engine": run.engine.name,
            "planned_resident_gib": plan.resident / 2**30 if plan else None,
            "planned_reward_model_gib": plan.beside / 2**30 if plan else None,
            "classifier_params": sum(p.numel() for p in run.rewards.scorer.model.parameters()) if with_rm else 0}


def summary(result: dict) -> dict:
    """First step, warm steps (the median of the rest), scoring time and peak memory of one variant."""
    steps = result["steps"]
    warm = steps[1:] or steps
    peaks = [s["peak_memory_gb"] for s in steps if s["peak_memory_gb"] is not None]
    return {"variant": result["variant"], "first_step_s": steps[0]["step_time"],
            "warm_step_s": statistics.median(s["step_time"] for s in warm),
            "reward_model_s": statistics.median(s["reward_model_time"] for s in warm),
            "peak_gib": max(peaks) if peaks else None}


def print_table(summaries: list, card: str) -> None:
    print(f"\n{card}")
    print(f"  {'variant':<20} {'first step':>11} {'warm step':>10} {'RM scoring':>11} {'peak':>9}")
    for s in summaries:
        peak = f"{s['peak_gib']:.1f} GiB" if s["peak_gib"] is not None else "-"
        print(f"  {s['variant']:<20} {s['first_step_s']:>9.2f} s {s['warm_step_s']:>8.2f} s {s['reward_model_s']:>9.3f} s "
              f"{peak:>9}")
    if len(summaries) == 2:
        base, rm = summaries
        print(f"  warm step with the reward model: {rm['warm_step_s'] / base['warm_step_s']:.3f}x the step without")


def run_variant(args, with_rm: bool) -> dict:
    """One variant in a fresh process; its result, or why there is none."""
    out = Path(tempfile.gettempdir()) / f"rm-bench-{'with' if with_rm else 'without'}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--variant", "with" if with_rm else "without", "--result", str(out),
           "--steps", str(args.steps), *(["--tiny"] if args.tiny else [])]
    rc = subprocess.run(cmd).returncode
    if not out.exists():
        raise SystemExit(f"variant {'with' if with_rm else 'without'} failed (exit {rc})")
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny policy and tiny classifier on the CPU (checks the script)")
    p.add_argument("--steps", type=int, default=0, help="steps per variant (default 4 on the GPU, 2 with --tiny)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--variant", choices=("with", "without"), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.steps = args.steps or (2 if args.tiny else 4)
    if args.variant:
        result = variant(args.tiny, args.variant == "with", args.steps)
        Path(args.result).write_text(json.dumps(result))
        return
    results = [run_variant(args, False), run_variant(args, True)]  # the same machine, one after the other
    summaries = [summary(r) for r in results]
    card = " / ".join(sorted({r["card"] for r in results}))
    if args.json:
        from importlib.metadata import version

        meta = {"card": card, "torch": version("torch"), "transformers": version("transformers"),
                "date": time.strftime("%Y-%m-%d"), "tiny": args.tiny, "steps": args.steps}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "summary": summaries, "variants": results}, indent=1))
    print_table(summaries, card)


if __name__ == "__main__":
    main()
