"""Forward + backward of the GRPO log-prob loss on the GPU: PEFT's LoRA forward against ours, with and
without offloaded checkpoints, and where the time goes.

Subject: the Qwen3-4B shape with random bf16 weights built on the GPU, LoRA r32 / alpha 64 on all
projections, gradient checkpointing, Liger's RMSNorm/SwiGLU/RoPE when installed, chunked log-probs
(1,024 tokens a chunk; 512 in some rows; the Triton head kernel, and once the torch path instead),
cuDNN attention as training sets it (or both ways), batches of 8 and 16 x 1,280 tokens (once with every
other row left-padded by 37, as rollout batches are). Each row:
tokens/s (best of the timed iterations after one warm-up) and peak allocated memory. Also: adapter
gradients of each variant against the previous one (same batch), and a kernel-time profile of one iteration.

    PYTHONPATH=src python3 benchmarks/train_speed.py --out $OUT [--skip-peft] [--cudnn both]
    PYTHONPATH=src python3 benchmarks/train_speed.py --out $OUT --skip-peft --micro 16 4 2 1   # recompute or not
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from _subject import QWEN3_4B, kernel_profile

SEQ, R = 1280, 32
LAYOUT = None  # how `step` lays batches out (mathgrpo.training.logprobs.PassLayout); None: the default, set by main


def build(liger: bool):
    """The LoRA-wrapped Qwen3-4B-shaped model with checkpointing, in train mode."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from mathgrpo.config import LoraConfig, ModelConfig
    from mathgrpo.model.loading import add_lora, apply_liger, enable_checkpointing

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B)).to(torch.bfloat16)
    used = apply_liger(model, ModelConfig(use_liger=None if liger else False))
    model = add_lora(model, LoraConfig(r=R, alpha=2 * R))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)  # non-zero B, so every adapter gradient is exercised
    enable_checkpointing(model, ModelConfig())
    model.train()
    return model, used


def step(model, ids, mask, adv, chunk: int = 1024):
    """One forward + backward of the chunked log-prob loss (laid out as this benchmark's `LAYOUT` says)."""
    from mathgrpo.training.logprobs import DEFAULT_LAYOUT, token_logprobs

    (token_logprobs(model, ids, mask, 256, 1.0, chunk, LAYOUT or DEFAULT_LAYOUT) * adv).mean().backward()


def batch(n: int, seed: int = 0, pad: int = 0):
    """(ids, mask, advantages) of n random rows; every other row starts with `pad` masked positions."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    ids = torch.randint(3, QWEN3_4B["vocab_size"], (n, SEQ), device="cuda", generator=g)
    mask = torch.ones_like(ids)
    mask[1::2, :pad] = 0
    return ids, mask, torch.randn(n, 1, device="cuda", generator=g)


def measure(model, label: str, n: int, iters: int = 3, chunk: int = 1024, pad: int = 0, micro: int = 0) -> dict:
    """Best-of-`iters` tok/s after a warm-up, and the peak memory of those iterations (`pad`: see batch);
    `micro`: the n rows taken that many a pass, gradients accumulated (as the trainer's micro-batches)."""
    ids, mask, adv = batch(n, pad=pad)
    size = micro or n
    parts = [(ids[i : i + size], mask[i : i + size], adv[i : i + size]) for i in range(0, n, size)]
    shape = {"batch": n, **({"micro_batch": micro} if micro else {})}
    try:
        step(model, *parts[0], chunk)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(iters):
            model.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for part in parts:
                step(model, *part, chunk)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        row = {"variant": label, **shape, "seq": SEQ, "chunk_tokens": chunk, "tok_s": n * SEQ / min(times), "s_per_iter": min(times),
               "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    except torch.cuda.OutOfMemoryError as err:
        row = {"variant": label, **shape, "error": f"OOM: {str(err)[:200]}"}
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    print(row, flush=True)
    return row


def adapter_grads(model) -> torch.Tensor:
    """All adapter gradients of one small batch, flattened (fp32)."""
    model.zero_grad(set_to_none=True)
    step(model, *batch(2, seed=1))
    out = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.requires_grad]).cpu()  # off the card: not in later peaks
    model.zero_grad(set_to_none=True)
    return out


def profile(model, n: int, path: Path) -> dict:
    """Kernel time of one iteration by category (ms), the top kernels written to `path`."""
    args = batch(n)

    def run():
        step(model, *args)
        model.zero_grad(set_to_none=True)

    return {"batch": n, **kernel_profile(run, path)}


def main() -> None:
    from mathgrpo.model.fused_lora import fuse_lora
    from mathgrpo.model.offload import offload_checkpoints
    from mathgrpo.training.logprobs import PassLayout

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--no-liger", action="store_true")
    p.add_argument("--skip-peft", action="store_true", help="no rows through PEFT's own LoRA forward")
    p.add_argument("--cudnn", choices=("off", "on", "both"), default="on",
                   help="PyTorch's cuDNN attention backend (on in training unless model.cudnn_attention=false); "
                        "both: the fused rows with it off, then on (on for the rest)")
    p.add_argument("--micro", type=int, nargs="*", default=[],
                   help="after the fused rows: 16 rows as micro-batches of these sizes, every layer checkpointed (products "
                        "kept or not), none, every 2nd and 4th (does less recompute pay for smaller passes?); then exit")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, liger = build(not args.no_liger)
    cudnn = ("off", "on") if args.cudnn == "both" else (args.cudnn,)
    torch.backends.cuda.enable_cudnn_sdp(cudnn[0] == "on")
    meta = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "liger": liger, "date": time.strftime("%Y-%m-%d"),
            "cudnn_attention": args.cudnn}
    rows, checks, profiles = [], {}, {}
    reference = None
    if not args.skip_peft:
        rows += [measure(model, "PEFT LoRA forward", n) for n in (8, 16)]
        profiles["PEFT LoRA forward"] = profile(model, 16, out / "profile_peft.txt")
        reference = adapter_grads(model)
        again = adapter_grads(model)
        checks["PEFT vs PEFT (same batch again), relative grad difference"] = float((again - reference).norm() / reference.norm())
    fuse_lora(model)
    fused = adapter_grads(model)
    if reference is not None:
        checks["fused vs PEFT, relative grad difference"] = float((fused - reference).norm() / reference.norm())
    for setting in cudnn:
        torch.backends.cuda.enable_cudnn_sdp(setting == "on")
        rows += [measure(model, f"fused LoRA, cuDNN attention {setting}", n) for n in (8, 16)]
    if args.micro:
        rows += micro_rows(model, args.micro, checks)
        return report(out, meta, rows, checks, profiles)
    profiles["fused LoRA"] = profile(model, 16, out / "profile_fused.txt")
    offload_checkpoints(model)
    offloaded = adapter_grads(model)
    checks["offloaded vs on-GPU checkpoints, relative grad difference"] = float((offloaded - fused).norm() / fused.norm())
    label = "fused LoRA + offloaded checkpoints"
    rows += [measure(model, label, n) for n in (8, 16)]
    profiles[label] = profile(model, 16, out / "profile_offload.txt")
    rows += [measure(model, label + ", every other row left-padded by 37", n, pad=37) for n in (8, 16)]
    rows += [measure(model, label + ", 512-token log-prob chunks", n, chunk=512) for n in (8, 16)]
    global LAYOUT
    LAYOUT = PassLayout(head_kernel=False)  # the torch path of the frozen-head log-probs, for comparison
    torch_head = adapter_grads(model)
    checks["torch head path vs Triton head kernel, relative grad difference"] = float((torch_head - offloaded).norm() / offloaded.norm())
    rows += [measure(model, label + ", torch head path (no Triton kernel)", n) for n in (8, 16)]
    report(out, meta, rows, checks, profiles)


def micro_rows(model, sizes: list, checks: dict) -> list:
    """16 rows in micro-batches of each size: every layer checkpointed (keeping its input alone, then its products'
    outputs too), none, and every 2nd / 4th layer; the adapter gradients of the first three compared."""
    from mathgrpo.model.loading import checkpoint_layers

    base = model.get_base_model()
    rows = [measure(model, "fused LoRA, checkpointed", 16, micro=m) for m in sizes]
    with_ckpt = adapter_grads(model)
    checkpoint_layers(base, keep_matmuls=True)
    kept = adapter_grads(model)
    checks["products kept vs plain checkpointing, relative grad difference"] = float((kept - with_ckpt).norm() / with_ckpt.norm())
    rows += [measure(model, "fused LoRA, checkpointed, products kept", 16, micro=m) for m in sizes]
    checkpoint_layers(base)
    checkpoint_every(base, 0)
    without = adapter_grads(model)
    checks["no checkpointing vs checkpointing, relative grad difference"] = float((without - with_ckpt).norm() / with_ckpt.norm())
    rows += [measure(model, "fused LoRA, no checkpointing", 16, micro=m) for m in sizes]
    for every in (2, 4):
        checkpoint_every(base, every)
        rows += [measure(model, f"fused LoRA, 1 layer in {every} checkpointed", 16, micro=m) for m in sizes]
    return rows


def checkpoint_every(base, every: int) -> None:
    """Checkpoint decoder layers 0, every, 2 * every, ... (none for 0), by each layer's own flag, so that it
    works on any transformers that has the flag (the `every_n_layers` argument is newer)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from mathgrpo.model.loading import checkpoint_layers

    checkpoint_layers(base)
    layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = bool(every) and i % every == 0


def report(out: Path, meta: dict, rows: list, checks: dict, profiles: dict) -> None:
    """train_speed.json, and the short table."""
    (out / "train_speed.json").write_text(json.dumps({"meta": meta, "rows": rows, "checks": checks, "profiles": profiles}, indent=1))
    print(f"\n{meta['card']}  liger={meta['liger']}")
    for r in rows:
        if "error" in r:
            print(f"  {r['variant']:<80} {r['batch']:>2} x {SEQ}: {r['error'][:80]}")
        else:
            micro = f" ({r['micro_batch']} a pass)" if "micro_batch" in r else ""
            print(f"  {r['variant'] + micro:<80} {r['batch']:>2} x {SEQ}: {r['tok_s']:>8,.0f} tok/s  {r['peak_gib']:5.2f} GiB"
                  f" ({r['peak_gib'] * 2**30 / 1e9:.2f} GB)")
    for k, v in checks.items():
        print(f"  {k}: {v:.2e}")
    for name, pr in profiles.items():
        cats = ", ".join(f"{c} {ms:.0f}" for c, ms in pr["by_category_ms"].items())
        print(f"  profile {name}: wall {pr['wall_ms_profiled']:.0f} ms, kernels {pr['kernel_ms']:.0f} ms: {cats}")


if __name__ == "__main__":
    main()
