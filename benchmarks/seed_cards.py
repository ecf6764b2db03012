"""The reference recipe on the seed's cards, emulated on a bigger GPU: memory capped to what a T4 (15 GiB) or an
L4 (22 GiB) has, the dtype and rollout engine each card gets (`model/card.py`: T4 float16 mixed precision with
transformers generate, L4 bfloat16 with the native engine).

Subject: the Qwen3-4B shape with random weights and the real Qwen3 tokenizer (`--tokenizer`, a folder with
tokenizer.json), `recipes/qwen3-4b-grpo.yaml` as it is (4 prompts x 4 completions, 1,024 new tokens forced to their
full length, LoRA r32, 2,048-token sequences), bundled GSM8K problems as prompts and worked solutions. Per card:
the warm-up's first and warm step and GRPO's first and warm step, each with its time and the peak memory
(torch.cuda.max_memory_allocated), under `torch.cuda.set_per_process_memory_fraction(cap)` and
`grpo.max_memory_gb=cap`. Times are the emulating card's, not a T4's or an L4's; memory is what the cap allowed.

    PYTHONUNBUFFERED=1 PYTHONPATH=src python benchmarks/seed_cards.py --tokenizer .tok --json $OUT/seed_cards.json
    PYTHONPATH=src python benchmarks/seed_cards.py --tiny --json /tmp/seed-tiny.json   # CPU: checks the script
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import shutil
import tempfile
import time
import traceback
from pathlib import Path

from _subject import QWEN3_4B  # benchmarks/ is on the path when this script runs

CARDS = {  # name -> (memory cap GiB, what model/card.py chooses on that card)
    "T4": (15.0, ["model.dtype=float16", "rollout.engine=hf"]),
    "L4": (22.0, ["model.dtype=bfloat16", "rollout.engine=native"]),
}
TINY = {"vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True,
        "rope_theta": 1e6, "max_position_embeddings": 4096}


def model_folder(tokenizer: Path, tiny: bool) -> Path:
    """config.json of the shape and the real tokenizer's files: what model.init=random reads."""
    from transformers import Qwen3Config

    folder = Path(tempfile.mkdtemp(prefix="seed-cards-model-"))
    Qwen3Config(**(TINY if tiny else QWEN3_4B), eos_token_id=151643, pad_token_id=151643).save_pretrained(folder)
    for f in Path(tokenizer).glob("tokenizer*.json"):
        shutil.copy(f, folder / f.name)
    return folder


def peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def reset() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def timed(fn) -> dict:
    """fn() with its wall time and the peak memory it reached."""
    import torch

    reset()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {"seconds": round(time.perf_counter() - t, 2), "peak_gib": round(peak_gib(), 2), **(out or {})}


GRPO_KEYS = ("rollout_time", "logprob_time", "backward_time", "micro_batch_size", "completion_length", "loss_scale")


def grpo_step(grpo) -> dict:
    """One GRPO step: the metrics of GRPO_KEYS (read from the one step's metrics)."""
    metrics = grpo.train_step()
    return {k: metrics.get(k) for k in GRPO_KEYS}


def profiled(fn, path: Path):
    """fn() under cProfile; the 40 functions of most cumulative time go to `path` (CUDA work shows up in the
    calls that wait for it)."""
    import cProfile
    import io
    import pstats

    profile = cProfile.Profile()
    out = profile.runcall(fn)
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(40)
    path.write_text(text.getvalue())
    return out


def probe_hf(grpo, tokens: int) -> dict:
    """transformers generate's time per decode step for the step's 16 sequences, with the cache grown a token at a
    time (dynamic, generate's default) and allocated once at full length (static): which one the GRPO steps use."""
    from mathgrpo.data.formats import prompts_for

    cfg = grpo.cfg
    problems = grpo.train_problems[: cfg.grpo.prompts_per_step]
    prompts = prompts_for(problems, grpo.fmt, grpo.tok, cfg.format.template)
    params = dataclasses.replace(grpo.params, max_new_tokens=tokens)
    G = cfg.grpo.num_generations
    result: dict = {}
    for variant in ("dynamic", "static"):
        grpo.engine.static_cache = variant == "static"
        try:
            row = timed(lambda: {"n": len(grpo.engine.generate(prompts, G, params, list(range(len(prompts) * G))))})
            row["s_per_token"] = round(row["seconds"] / tokens, 4)
        except Exception as err:  # a variant that fails is a result too
            row = {"error": f"{type(err).__name__}: {err}"[:500], "s_per_token": float("inf")}
        result[variant] = row
    result["best"] = min(("dynamic", "static"), key=lambda v: result[v]["s_per_token"])
    return result


def one_card(card: str, folder: Path, args) -> dict:
    """The warm-up's and GRPO's first and warm steps under the card's cap, dtype and engine."""
    import torch

    from mathgrpo.config import load_config
    from mathgrpo.data import load_source
    from mathgrpo.training.grpo import GRPORun
    from mathgrpo.training.sft import SFTRun

    cap, choices = CARDS[card]
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
    over = [f"model.name={folder}", "model.init=random", f"grpo.max_memory_gb={cap}", "run.progress=false",
            "run.sample_every=100000", *choices]
    if args.tiny:
        over += ["model.device=cpu", "model.dtype=float32", "rollout.max_new_tokens=8", "model.max_seq_length=256"]
    cfg = load_config("qwen3-4b-grpo", over)
    problems = load_source("gsm8k", split="train", limit=64, seed=0).problems
    out: dict = {"cap_gib": cap, "settings": choices, "grpo": {}, "sft": {}}
    run_dir = Path(tempfile.mkdtemp(prefix=f"seed-cards-{card}-"))
    sft = SFTRun(cfg, run_dir, problems, problems[:1])
    out["loaded_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2) if torch.cuda.is_available() else 0.0
    for label in ("first", "warm"):
        out["sft"][label] = timed(lambda: {"loss": sft.train_step()})
        print(f"{card} warm-up {label}: {out['sft'][label]}", flush=True)
    del sft
    reset()
    grpo = GRPORun(cfg, run_dir, problems, problems[:1])
    grpo.engine.stop_ids = []  # random weights: completions forced to their full length
    if grpo.engine.name == "hf":
        out["probe"] = probe_hf(grpo, args.probe_tokens)
        grpo.engine.static_cache = out["probe"]["best"] == "static"
        per_token = out["probe"][out["probe"]["best"]]["s_per_token"]
        fits = int(args.max_rollout_s / per_token)
        if fits < grpo.params.max_new_tokens:  # a measurement that ends beats one cut off by the call's limit
            grpo.params = dataclasses.replace(grpo.params, max_new_tokens=max(64, fits // 64 * 64))
        out["grpo_new_tokens"] = grpo.params.max_new_tokens
        print(f"{card} hf probe: {out['probe']}; GRPO steps at {grpo.params.max_new_tokens} new tokens", flush=True)
    for label in ("first", "warm"):
        profile = args.json.with_name(f"profile-{card}-{label}.txt")
        step = (lambda: profiled(lambda: grpo_step(grpo), profile)) if args.profile else (lambda: grpo_step(grpo))
        out["grpo"][label] = timed(step)
        print(f"{card} grpo {label}: {out['grpo'][label]}", flush=True)
    out["engine"], out["dtype"] = grpo.engine.name, str(grpo.precision.dtype)
    del grpo
    reset()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", type=Path, required=True, help="folder with the Qwen3 tokenizer.json")
    parser.add_argument("--cards", nargs="+", default=list(CARDS), choices=list(CARDS))
    parser.add_argument("--tiny", action="store_true", help="a tiny shape on the CPU: checks the script")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--profile", action="store_true", help="GRPO steps under cProfile (profile-*.txt beside --json)")
    parser.add_argument("--probe-tokens", type=int, default=64, help="new tokens of the hf engine's probe")
    parser.add_argument("--max-rollout-s", type=float, default=150.0,
                        help="GRPO's new tokens are cut to what the probe says fits in this many seconds a rollout")
    args = parser.parse_args()
    folder = model_folder(args.tokenizer, args.tiny)
    results: dict = {}
    for card in args.cards:
        try:
            results[card] = one_card(card, folder, args)
        except Exception as err:  # an out-of-memory step is a result: it says the card does not hold the recipe
            results[card] = {"error": f"{type(err).__name__}: {err}"[:2000], "traceback": traceback.format_exc()[-3000:]}
            print(f"{card}: {results[card]['error']}", flush=True)
            reset()
        args.json.write_text(json.dumps(results, indent=1))
    print(f"{'card':5} {'cap':>5} {'dtype':>15} {'engine':>7} {'phase':6} {'first s':>8} {'warm s':>7} {'peak GiB':>9}")
    for card, r in results.items():
        if "error" in r:
            print(f"{card:5} {r['error'][:100]}")
            continue
        for phase in ("sft", "grpo"):
            f, w = r[phase]["first"], r[phase]["warm"]
            print(f"{card:5} {r['cap_gib']:5.0f} {r['dtype']:>15} {r['engine']:>7} {phase:6} {f['seconds']:8.1f} "
                  f"{w['seconds']:7.1f} {max(f['peak_gib'], w['peak_gib']):9.2f}")


if __name__ == "__main__":
    main()
