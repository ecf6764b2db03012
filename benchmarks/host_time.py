"""Host time of a training pass: the Python and dispatch work of one log-prob forward + backward, measured on the
CPU with a model whose layers do almost no arithmetic.

On the GPU the passes of a GRPO step are bound by the host at micro-batches of 16 completions (docs/performance.md,
"Packed passes"): the kernels of a Qwen3-4B-shaped pass take ~300 ms, the pass ~710 ms. This measures the part
that does not depend on the GPU, so work on it can be iterated without one: 36 decoder layers as Qwen3-4B has, of
width 64 (the arithmetic is microseconds), LoRA on all projections through the trainer's fused function, 4 x 32
tokens, one thread. Each setting: the median milliseconds of `--iters` passes after 3 warm-up passes; `--profile`:
the functions with the most own time (cProfile) for one setting.

    PYTHONPATH=src python benchmarks/host_time.py [--only products] [--profile products]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time

import torch

# name -> (checkpointing, keep products, packed passes, compiled layers); packed passes run the per-sequence
# reference attention on the CPU (one SDPA call a sequence, where the GPU makes one flash call a layer), so their
# figure is high here; compiled layers (`model.compile_layers`, not checkpointed) compile at the warm-up passes
SETTINGS = {
    "none": (False, False, False, False),
    "inputs": (True, False, False, False),
    "products": (True, True, False, False),
    "products-packed": (True, True, True, False),
    "compiled": (False, False, False, True),
}


def build(checkpointing: bool, keep: bool, compiled: bool = False):
    """The deep, narrow LoRA model in train mode, checkpointed or compiled as asked."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from mathgrpo.config import LoraConfig
    from mathgrpo.model.compiled import compile_layers
    from mathgrpo.model.fused_lora import fuse_lora
    from mathgrpo.model.loading import add_lora, checkpoint_layers

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=36,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=16))
    model.set_attn_implementation("sdpa")
    model = add_lora(model, LoraConfig(r=8, alpha=16))
    fuse_lora(model)
    if checkpointing:
        checkpoint_layers(model, keep_matmuls=keep)
        model.enable_input_require_grads()
    if compiled:
        compile_layers(model)
    model.train()
    return model


def pass_fn(setting: str):
    """(a zero-argument forward + backward of the setting, the context it runs in)."""
    from mathgrpo.model.compiled import training_passes
    from mathgrpo.training import packing
    from mathgrpo.training.logprobs import PassLayout, token_logprobs

    checkpointing, keep, packed, compiled = SETTINGS[setting]
    model = build(checkpointing, keep, compiled)
    ids = torch.randint(3, 999, (4, 32), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    layout = PassLayout(pack=packed)
    run = lambda: token_logprobs(model, ids, mask, 16, 1.0, layout=layout).sum().backward()  # noqa: E731
    return run, packing.attention(model) if packed else training_passes(model)


def measure(setting: str, iters: int) -> float:
    """Median milliseconds of one pass."""
    run, context = pass_fn(setting)
    with context:
        for _ in range(3):
            run()
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            run()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def profile(setting: str, rows: int = 20) -> None:
    """The functions with the most own time over 5 passes."""
    run, context = pass_fn(setting)
    with context:
        for _ in range(3):
            run()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(5):
            run()
        prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=["none", "inputs", "products", "compiled"], choices=list(SETTINGS))
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--profile", choices=list(SETTINGS), help="instead: cProfile one setting")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.profile:
        return profile(args.profile)
    results = {name: measure(name, args.iters) for name in args.only}
    print(json.dumps(results))
    for name, ms in results.items():
        print(f"{name:16s} {ms:7.1f} ms a forward + backward (36 layers)")


if __name__ == "__main__":
    main()
