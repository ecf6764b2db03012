"""The order of a LoRA projection's GEMMs: the base GEMM first and the low-rank product added onto its
output (PEFT's and Unsloth's order; ours before the seventh session), against the low-rank product first
and the base GEMM accumulated onto it (`fused_lora.LoraLinear` now). The second writes the output once in
the small GEMM and lets the large one read it in its epilogue; the first reads and writes the whole output
again in a memory-bound pass. Backward builds `dx` the same two ways.

On the GPU: each projection shape of the Qwen3-4B layer at 20,480 tokens (forward, forward + backward),
then the whole model (the `train_speed.py` subject: fused LoRA, offloaded checkpoints, chunked log-probs),
both orders interleaved twice at 8 and 16 x 1,280, the adapter gradients of one against the other, and a
kernel profile of each.

    PYTHONPATH=src python3 benchmarks/lora_order.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mathgrpo.model import fused_lora
from _subject import cuda_ms  # benchmarks/ is on the path when this script runs
from train_speed import SEQ

TOKENS, R = 20480, 32
SHAPES = (("q", 2560, 4096), ("k / v", 2560, 1024), ("o", 4096, 2560), ("gate / up", 2560, 9728), ("down", 9728, 2560))


class BaseFirst(torch.autograd.Function):
    """The base GEMM first, then the low-rank product added onto its output in place (the other order)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale):
        """y = x W^T (+ b), then y += scale (x A^T) B^T."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        a, b = lora_a.to(x2.dtype), lora_b.to(x2.dtype)
        xa = x2 @ a.t()
        out = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
        out.addmm_(xa, b.t(), alpha=scale)
        ctx.save_for_backward(x2, weight, a, b, xa)
        ctx.scale, ctx.shape, ctx.adapter_dtypes = scale, shape, (lora_a.dtype, lora_b.dtype)
        return out.view(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        """dx = g W, then dx += (s g B) A; adapter gradients as in LoraLinear."""
        x2, weight, a, b, xa = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(x2.dtype)
        g_xa = (g @ b).mul_(ctx.scale)
        dx = (g @ weight).addmm_(g_xa, a).view(ctx.shape)
        da = (g_xa.t() @ x2).to(ctx.adapter_dtypes[0])
        db = (g.t() @ xa).mul_(ctx.scale).to(ctx.adapter_dtypes[1])
        return dx, None, None, da, db, None


ORDERS = {"base first": BaseFirst, "low-rank first (ours)": fused_lora.LoraLinear}


def projections() -> list:
    """Forward and forward + backward milliseconds of each order at each projection shape."""
    rows = []
    for name, fan_in, fan_out in SHAPES:
        x = torch.randn(TOKENS, fan_in, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(fan_out, fan_in, device="cuda", dtype=torch.bfloat16) * 0.02
        a = (torch.randn(R, fan_in, device="cuda", dtype=torch.bfloat16) * 0.02).requires_grad_()
        b = (torch.randn(fan_out, R, device="cuda", dtype=torch.bfloat16) * 0.02).requires_grad_()
        g = torch.randn(TOKENS, fan_out, device="cuda", dtype=torch.bfloat16)
        row = {"projection": name, "in": fan_in, "out": fan_out, "tokens": TOKENS}
        for label, fn in ORDERS.items():
            row[f"{label}: forward ms"] = cuda_ms(lambda: fn.apply(x, w, None, a, b, 2.0))
            row[f"{label}: forward + backward ms"] = cuda_ms(lambda: fn.apply(x, w, None, a, b, 2.0).backward(g))
        rows.append(row)
        print(row, flush=True)
    return rows


def whole_model(out: Path) -> dict:
    """Both orders on the train_speed.py subject: tok/s rows (interleaved, twice), gradient check, profiles."""
    import train_speed as ts

    from mathgrpo.model.offload import offload_checkpoints

    model, liger = ts.build(True)
    fused_lora.fuse_lora(model)
    offload_checkpoints(model)
    grads = {}
    for label, fn in ORDERS.items():
        fused_lora.fuse_lora(model, fn)
        grads[label] = ts.adapter_grads(model)
    a, b = grads.values()
    result = {"liger": liger, "adapter grads, relative difference between the orders": float((a - b).norm() / a.norm()), "rows": [], "profiles": {}}
    for rep in range(2):
        for label, fn in ORDERS.items():
            fused_lora.fuse_lora(model, fn)
            result["rows"] += [ts.measure(model, f"{label}, round {rep + 1}", n) for n in (8, 16)]
    for label, fn in ORDERS.items():
        fused_lora.fuse_lora(model, fn)
        name = "profile_lora_" + label.split()[0].replace("-", "_") + ".txt"
        result["profiles"][label] = ts.profile(model, 16, out / name)
    fused_lora.fuse_lora(model)
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    result = {"meta": meta, "projections": projections(), "model": whole_model(out)}
    (out / "lora_order.json").write_text(json.dumps(result, indent=1))
    print(f"\n{meta['card']}: ms at {TOKENS:,} tokens (forward / forward + backward)")
    for r in result["projections"]:
        cells = "   ".join(f"{k}: {r[f'{k}: forward ms']:.3f} / {r[f'{k}: forward + backward ms']:.3f}" for k in ORDERS)
        print(f"  {r['projection']:<10} {r['in']:>5} -> {r['out']:<5} {cells}")
    for r in result["model"]["rows"]:
        print(f"  {r['variant']:<30} {r['batch']:>2} x {SEQ}: {r['tok_s']:>8,.0f} tok/s  {r['peak_gib']:5.2f} GiB")
    print(f"  adapter grads, relative difference: {result['model']['adapter grads, relative difference between the orders']:.2e}")
    for label, pr in result["model"]["profiles"].items():
        cats = ", ".join(f"{c} {ms:.0f}" for c, ms in pr["by_category_ms"].items())
        print(f"  profile {label}: kernels {pr['kernel_ms']:.0f} ms: {cats}")


if __name__ == "__main__":
    main()
