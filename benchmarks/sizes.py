"""Qwen3 sizes on one GPU: each size's recipe step, and the largest step that fits under a memory cap.

For each size (1.7b, 4b, 8b, 14b) the model of that shape (`mathgrpo/model/known.py`) is built with random
bf16 weights through the project's own path (`model.init=random` on a folder holding only config.json and a
word-level tokenizer over the 151,936 ids; the 4-bit base is loaded by Unsloth from random weights saved once
to that folder) and trained by `GRPORun` with the size's recipe (`qwen3-<size>-grpo`); 256-token prompts,
completions forced to their full length (no stop ids). Phases:

- `step`: the recipe's settings on the whole card: the first step (compilation, graph capture) and a warm one,
  their times and peak memory (torch.cuda.max_memory_allocated).
- `fit24`, `fit80` (`fitN`: any cap in GiB): the caching allocator capped at N GiB
  (set_per_process_memory_fraction; the whole card when it has less) and `grpo.max_memory_gb=N`; a ladder of
  group x prompts x completion length, smallest first, one step each in ONE PASS: every completion of the step in
  one generate call and one forward/backward micro-batch (`rollout.batch_size` and `grpo.micro_batch_size` set to
  the whole step, so the trainer's halving after an out-of-memory error, `Sizing.after_out_of_memory`, is off and
  the error comes through), layer inputs offloaded to the host, the rollout's KV cache freed before training. The
  ladder stops at the first rung that runs out of memory; the last one that ran is the largest that fits (its
  time is a first step at that shape: compilation and graph capture included). (With
  its memory plan the trainer runs larger steps in several passes: these are the steps a card holds at once.)
  For 14b under a cap where the bf16 base does not fit (preflight's estimate) the base is 4-bit on the Unsloth
  backend (`--four-bit` overrides), which needs Unsloth and bitsandbytes importable and a call of its own: Unsloth
  must be imported before transformers and patches it for the whole process.

One process; results are merged into `--json` after every measurement (several calls fill one file), a short
table is printed last. `--deadline` seconds after the start no new step begins (a row says what was skipped).

    PYTHONUNBUFFERED=1 PYTHONPATH=src python benchmarks/sizes.py --sizes 1.7b 8b --phases step fit24 fit80 \\
        --json benchmarks/results/sizes.json --deadline 450
    PYTHONPATH=src python benchmarks/sizes.py --tiny --json /tmp/sizes-tiny.json   # CPU: checks the script
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

T0 = time.perf_counter()
PROMPT = 256
SIZES = {"1.7b": "1.7B", "4b": "4B", "8b": "8B", "14b": "14B"}
# (group, prompts, new tokens), smallest step first: prompt + completion = 512, 1,024, 2,048 or 4,096 tokens
LADDER = [(4, 2, 256), (4, 4, 256), (4, 4, 768), (8, 4, 768), (8, 8, 768), (8, 8, 1792), (16, 8, 1792),
          (16, 16, 1792), (16, 16, 3840)]
TINY_LADDER = [(2, 1, 8), (2, 2, 8), (4, 2, 16), (4, 4, 16)]
# The tiny mode's stand-in for a memory cap on the CPU: a training batch over this many tokens raises CUDA's
# out-of-memory error, so that the ladder's stop and clean-up run here too (the last tiny rung hits it).
TINY_OOM_TOKENS = 4000
TINY_SHAPE = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True,
              "rope_theta": 1e6, "max_position_embeddings": 4096}


def shape_kwargs(size: str, tiny: bool) -> dict:
    from mathgrpo.model.known import qwen3_kwargs

    return dict(TINY_SHAPE) if tiny else qwen3_kwargs(SIZES[size])


def needs_4bit(size: str, cap: float, four_bit: str) -> bool:
    """Whether the `size` run under `cap` GiB takes the 4-bit base: --four-bit on/off, or (auto) 14b when
    preflight's estimate of the recipe's smallest bf16 step exceeds the cap. Imports no transformers."""
    if four_bit != "auto":
        return four_bit == "on"
    if size != "14b":
        return False
    from mathgrpo.config import load_config
    from mathgrpo.preflight import GIB, memory_needed
    from mathgrpo.training.memory import ModelShape

    shape = ModelShape.from_config(SimpleNamespace(**shape_kwargs(size, False)))
    return memory_needed(load_config(f"qwen3-{size}-grpo"), shape, True, int(cap * GIB))[0] > cap * GIB


# ---- the subject ----------------------------------------------------------------------------------

def model_folder(size: str, tiny: bool, weights: bool) -> str:
    """A folder with the shape's config.json and a word-level tokenizer (what model.init=random reads); with
    `weights`, random bf16 weights saved too (what Unsloth's 4-bit loading reads), made once per machine."""
    import torch
    from transformers import Qwen3Config

    from grpo_step import build_tokenizer

    kwargs = shape_kwargs(size, tiny)
    folder = Path(tempfile.gettempdir()) / f"mathgrpo-sizes-{'tiny' if tiny else size}"
    config = Qwen3Config(**kwargs, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    if not (folder / "tokenizer.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(folder)
        build_tokenizer(kwargs["vocab_size"]).save_pretrained(folder)
    if weights and not list(folder.glob("*.safetensors")):
        from transformers import AutoModelForCausalLM

        t = time.perf_counter()
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(folder)
        del model
        free()
        print(f"saved random bf16 weights to {folder} in {time.perf_counter() - t:.0f} s", flush=True)
    return str(folder)


def prompts(n: int, vocab: int, seed: int = 0) -> list:
    """`n` prompts of PROMPT made-up tokens ('t5 t17 ...')."""
    import random

    rng = random.Random(seed)
    return [" ".join(f"t{rng.randrange(3, vocab)}" for _ in range(PROMPT)) for _ in range(n)]


def make_run(size: str, args, overrides: list, four_bit: bool, one_pass: bool):
    """A GRPORun of the size's recipe on the random model, with `overrides`; `one_pass`: the rollout's KV cache
    is freed before training (the ladder measures what one step holds, not what the engine keeps for the next)."""
    import torch

    from mathgrpo.config import load_config
    from mathgrpo.data.problem import Problem
    from mathgrpo.training.grpo import GRPORun

    class OnePassRun(GRPORun):
        def learn(self, batch, total_seqs):
            self.engine.release()
            if args.tiny and batch.input_ids.numel() > TINY_OOM_TOKENS:
                raise torch.cuda.OutOfMemoryError(f"simulated (--tiny): {batch.input_ids.numel()} tokens > {TINY_OOM_TOKENS}")
            return super().learn(batch, total_seqs)

    vocab = shape_kwargs(size, args.tiny)["vocab_size"]
    over = [f"model.name={model_folder(size, args.tiny, four_bit)}", "model.init=random", "format.template=bare",
            "run.progress=false", "run.sample_every=100000"]
    if four_bit:
        over += ["model.backend=unsloth", "model.load_in_4bit=true"]
    if args.tiny:
        over += ["model.device=cpu", "model.dtype=float32", "rollout.engine=hf", "grpo.num_generations=2",
                 "grpo.prompts_per_step=2", "rollout.max_new_tokens=8", "model.max_seq_length=512"]
    cfg = load_config(f"qwen3-{size}-grpo", over + overrides + args.extra)
    problems = [Problem(id=str(i), question=q, answer="0", source="bench") for i, q in enumerate(prompts(64, vocab))]
    run = (OnePassRun if one_pass else GRPORun)(cfg, Path(tempfile.mkdtemp(prefix="sizes-run-")), problems, problems[:1])
    run.engine.stop_ids = []  # forced length
    return run


def free() -> None:
    """Return what Python and the caching allocator hold (after a failed step: its tensors die with the error)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    except Exception:  # a CUDA error left behind by the failed step shows up in the next one's row
        pass


def is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def step_row(run, m: dict) -> dict:
    """One step's numbers."""
    keys = ("step_time", "rollout_time", "reference_time", "logprob_time", "backward_time", "optimizer_time",
            "peak_memory_gb", "micro_batch_size", "completion_length", "tokens_per_s")
    cfg = run.cfg
    return {"group": cfg.grpo.num_generations, "prompts": cfg.grpo.prompts_per_step, "prompt_tokens": PROMPT,
            "new_tokens": run.params.max_new_tokens, **{k: m.get(k) for k in keys}, "engine": run.engine.name,
            "rollout_batch": run.engine.batch_size, "offloaded": run.sizing.offloaded,
            "backend": cfg.model.backend, "load_in_4bit": cfg.model.load_in_4bit}


def time_left(args) -> float:
    return args.deadline - (time.perf_counter() - T0)


# ---- phases ---------------------------------------------------------------------------------------

def phase_step(size: str, args, save) -> dict:
    """The recipe's settings on the whole card: first and warm step."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(1.0)  # after a fit phase in the same process
    run = make_run(size, args, [], four_bit=False, one_pass=False)
    cfg = run.cfg
    out = {"settings": {"group": cfg.grpo.num_generations, "prompts": cfg.grpo.prompts_per_step,
                        "new_tokens": cfg.rollout.max_new_tokens, "lora_r": cfg.lora.r, "lr": cfg.grpo.lr}}
    for label in ("first", "warm")[: 1 if args.tiny else 2]:
        if time_left(args) < 0:
            out[label] = {"skipped": "deadline"}
            break
        out[label] = step_row(run, run.train_step())
        print(f"{size} step {label}: {out[label]}", flush=True)
        save(out)
    return out


def set_shape(run, group: int, prompts_n: int, new: int) -> None:
    """One rung: the step's shape, all of it in one generate call and one micro-batch."""
    from mathgrpo.rollout import SamplingParams

    g, r, m = run.cfg.grpo, run.cfg.rollout, run.cfg.model
    g.num_generations, g.prompts_per_step, r.max_new_tokens, m.max_seq_length = group, prompts_n, new, PROMPT + new
    g.micro_batch_size = run.engine.batch_size = group * prompts_n
    run.params = SamplingParams(new, r.temperature, r.top_p, r.top_k, r.min_p)


def host_shortfall(size: str, tiny: bool, seqs: int, tokens: int) -> Optional[str]:
    """Why a one-pass step of `seqs` x `tokens` cannot run on this host (each layer's input, bf16, in pinned host
    memory: more than 40% of what the host has available), or None. (Without this a 1.7B ladder's
    process ended silently at such a rung, most likely killed by the host's out-of-memory killer.)"""
    shape = shape_kwargs(size, tiny)
    need = shape["num_hidden_layers"] * shape["hidden_size"] * seqs * tokens * 2
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    if need <= 0.4 * available:  # pinned blocks round up; a 56 GiB step on a 128 GiB host died
        return None
    return (f"host memory: the offloaded layer inputs need ~{need / 2**30:.0f} GiB pinned, "
            f"{available / 2**30:.0f} GiB available")


def phase_fit(size: str, cap: float, args, save, earlier: dict) -> dict:
    """The ladder under `cap` GiB (see the module docstring); with --skip-rungs, after the first rungs of `earlier`
    (this phase's entry from an earlier call)."""
    import torch

    four = not args.tiny and needs_4bit(size, cap, args.four_bit)
    kept = earlier.get("tries", [])[: args.skip_rungs]
    out: dict = {"cap_gib": cap, "load_in_4bit": four, "tries": kept, "skip_rungs": args.skip_rungs,
                 "largest": next((r for r in reversed(kept) if r.get("fits")), None)}
    budget = cap
    if four:
        model_folder(size, args.tiny, weights=True)  # saved before the cap: the bf16 model is built whole
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap * 2**30 / total))
        out["allocator_cap_gib"] = round(min(cap * 2**30, total) / 2**30, 2)
        budget = min(cap, round(0.95 * total / 2**30, 1))  # the trainer's own default on a smaller card
    out["max_memory_gb"] = budget
    over = [f"grpo.max_memory_gb={budget}", "grpo.micro_batch_tokens=0"]
    if not four and not args.tiny:
        over.append("model.offload_checkpoints=true")
    try:
        run = make_run(size, args, over, four_bit=four, one_pass=True)
    except Exception as err:  # the model alone does not fit, or Unsloth is missing: one row says which
        out["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        print(f"{size} fit{cap:g}: {out['error']}", flush=True)
        return out
    for group, prompts_n, new in (TINY_LADDER if args.tiny else LADDER)[args.skip_rungs:]:
        rung = {"group": group, "prompts": prompts_n, "new_tokens": new}
        if time_left(args) < 0:
            out["tries"].append({**rung, "skipped": "deadline"})
            break
        host = host_shortfall(size, args.tiny, group * prompts_n, PROMPT + new) if not four and not args.tiny else None
        if host:  # the offloaded layer inputs would not fit in host memory: the machine, not the card, is the limit
            out["tries"].append({**rung, "skipped": host})
            print(f"{size} fit{cap:g} {group}x{prompts_n}x{new}: skipped, {host}", flush=True)
            save(out)
            break
        set_shape(run, group, prompts_n, new)
        try:
            row = {**step_row(run, run.train_step()), "fits": True}
            row["oom_retried"] = bool(run.sizing.token_cap)  # the halving is off: never true here
        except Exception as err:
            row = {**rung, "fits": False, "out_of_memory": is_oom(err), "error": f"{type(err).__name__}: {str(err)[:300]}",
                   "trace": traceback.format_exc()[-1200:]}  # where it ran out: rollout or training
            del err
        run.engine.release()
        run.opt.zero_grad(set_to_none=True)
        free()
        out["tries"].append(row)
        print(f"{size} fit{cap:g} {group}x{prompts_n}x{new}: {'fits' if row['fits'] else row['error'][:120]}", flush=True)
        if row["fits"]:
            out["largest"] = row
        save(out)
        if not row["fits"]:
            break
    return out


# ---- results --------------------------------------------------------------------------------------

def merge(path: Path, size: str, key: str, value: dict, meta: dict) -> dict:
    """Write `value` as sizes[size][key] into the JSON at `path`, keeping everything else there."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("sizes", {}).setdefault(size, {})[key] = {**value, "measured": meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))
    return data


def meta_now(args) -> dict:
    import torch
    from importlib.metadata import version

    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    meta = {"card": card, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "tiny": args.tiny}
    for mod in ("transformers", "peft", "unsloth", "bitsandbytes", "liger-kernel"):
        try:
            meta[mod] = version(mod)
        except Exception:
            meta[mod] = None
    return meta


def cell(entry: dict) -> str:
    """A fit phase's largest one-pass step: G x prompts x new tokens, its time and peak memory."""
    best = entry.get("largest")
    if not best:
        return entry.get("error", "nothing fits")[:60]
    four = " (4-bit)" if entry.get("load_in_4bit") else ""
    return f"{best['group']}x{best['prompts']}x{best['new_tokens']}{four} {best['step_time']:.1f} s {number(best, 'peak_memory_gb')} GiB"


def number(row: dict, key: str) -> str:
    return f"{row[key]:.2f}" if isinstance(row.get(key), (int, float)) else "—"


def print_table(data: dict) -> None:
    """Size, first / warm step at the recipe's settings with peak memory, largest one-pass step per cap."""
    print("\nsize   first step  warm step  peak GiB  | largest one-pass step (G x prompts x new tokens, time, peak) per cap")
    for size, phases in data.get("sizes", {}).items():
        step = phases.get("step", {})
        first, warm = step.get("first", {}), step.get("warm", {})
        caps = "  ".join(f"{k}: {cell(v)}" for k, v in phases.items() if k.startswith("fit"))
        print(f"{size:<6} {number(first, 'step_time'):>10}  {number(warm, 'step_time'):>9}  "
              f"{number(warm or first, 'peak_memory_gb'):>8}  | {caps}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["1.7b", "8b", "14b"], choices=list(SIZES))
    p.add_argument("--phases", nargs="+", default=["step", "fit24", "fit80"], help="step, fitN (a cap of N GiB)")
    p.add_argument("--json", default="benchmarks/results/sizes.json", help="results file, merged into")
    p.add_argument("--deadline", type=float, default=450.0, help="seconds from the start after which no step begins")
    p.add_argument("--four-bit", default="auto", choices=["auto", "on", "off"], help="fit phases: the 4-bit base on Unsloth")
    p.add_argument("--extra", nargs="*", default=[], help="config overrides for every run (e.g. rollout.engine=hf)")
    p.add_argument("--skip-rungs", type=int, default=0,
                   help="fit phases: start the ladder this many rungs up (to continue a ladder an earlier call ran)")
    p.add_argument("--tiny", action="store_true", help="CPU check of the script: tiny shape, one step, a tiny ladder")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    caps = [float(ph[3:]) for ph in args.phases if ph.startswith("fit")]
    if any(ph != "step" and not (ph.startswith("fit") and ph[3:].replace(".", "", 1).isdigit()) for ph in args.phases):
        p.error(f"phases are step and fitN (N GiB), not {args.phases}")
    unsloth = {(s, c) for s in args.sizes for c in caps if not args.tiny and needs_4bit(s, c, args.four_bit)}
    if unsloth and (len(unsloth) < len(args.sizes) * len(caps) or "step" in args.phases):
        p.error(f"{sorted(unsloth)} run on the Unsloth backend, which patches transformers for the whole process: "
                "give them a call of their own (e.g. --sizes 14b --phases fit24)")
    if unsloth:
        from mathgrpo.model.unsloth_backend import import_unsloth

        import_unsloth()  # before transformers
    meta = meta_now(args)
    path = Path(args.json)
    data: dict = json.loads(path.read_text()) if path.exists() else {}
    for size in args.sizes:
        for phase in args.phases:
            if time_left(args) < 0:
                print(f"{size} {phase}: skipped, deadline", flush=True)
                continue
            t = time.perf_counter()
            earlier = data.get("sizes", {}).get(size, {}).get(phase, {})
            saved: dict = {}  # what the phase measured so far, kept if it fails later

            def save(value: dict, size=size, phase=phase, saved=saved) -> None:
                saved.clear()
                saved.update(json.loads(json.dumps(value, default=str)))
                merge(path, size, phase, value, meta)

            try:
                if phase == "step":
                    value = phase_step(size, args, save)
                else:
                    value = phase_fit(size, float(phase[3:]), args, save, earlier)
            except Exception as err:
                value = {**saved, "error": f"{type(err).__name__}: {str(err)[:400]}", "trace": traceback.format_exc()[-1500:]}
                print(value["trace"], flush=True)
            value["phase_s"] = round(time.perf_counter() - t, 1)
            data = merge(path, size, phase, value, meta)
            free()
    print_table(data)


if __name__ == "__main__":
    main()
