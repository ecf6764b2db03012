"""The decode step's projections at 16 and 64 rows: cuBLAS in bf16, the FP8 `unit` and `triton` ways as the engine
runs them, and the Triton kernel of `mathgrpo.rollout.skinny_gemm` alone over a sweep of its tiles (float8
activations and weights, bf16 activations and float8 weights, bf16 weights).

Subject: the Qwen3-4B layer's packed projections (q|k|v, o, gate|up, down), random std-0.02 weights. Each call is
timed inside a CUDA graph of 36 calls over enough weight copies that none is served from L2 (as a decode step
reads them); GB/s counts weight bytes. Prints one line per (op, rows) with the fastest kernel setting, the table
last, and writes every timing to --out/decode_gemm.json. Needs a CUDA GPU of compute capability 8.9+.

    cd benchmarks && PYTHONPATH=../src python3 decode_gemm.py --out $OUT --deadline 300
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _subject import QWEN3_4B
from rollout import graph_time

from mathgrpo.rollout import fp8, skinny_gemm

T0 = time.perf_counter()
H, I = QWEN3_4B["hidden_size"], QWEN3_4B["intermediate_size"]
Q, KV = QWEN3_4B["num_attention_heads"] * 128, QWEN3_4B["num_key_value_heads"] * 128
OPS = {"qkv": (Q + 2 * KV, H), "o": (H, Q), "gate_up": (2 * I, H), "down": (H, I)}  # (N, K)


def candidates(m: int, n: int, k: int) -> list:
    """Launch settings to time for x [m, k] @ w [n, k]^T: tiles (rows in tiles of 16 up to m), K splits keeping
    128 to 1,100 programs."""
    out = []
    block_ms = sorted({16, 32, 64} & set(range(16, max(m, 16) + 1)))
    for block_m, bn, bk, warps, stages in itertools.chain(itertools.product(block_ms, (32, 64, 128), (128,), (4,), (2, 3)),
                                                          itertools.product(block_ms, (32,), (256,), (4,), (3,))):
        for split in (1, 2, 4, 8):
            programs = -(-n // bn) * -(-m // block_m) * split
            if 128 <= programs <= 1100 and k // split >= bk:
                out.append(skinny_gemm.Launch(block_m, bn, bk, split, warps, stages))
    return out


def weights(n: int, k: int, copies: int) -> tuple:
    """`copies` random [n, k] bf16 matrices and their FP8 quantizations (weight, row scales)."""
    bf16 = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
    quant = []
    for w in bf16:
        q, scale = torch.empty(n, k, device="cuda", dtype=fp8.E4M3), torch.empty(n, device="cuda")
        fp8.quantize_rows(w, q, scale)
        quant.append((q, scale))
    return bf16, quant


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref).norm() / ref.norm()).item()


def sweep_op(op: str, m: int, bf16: list, quant: list, deadline: float) -> dict:
    """Times of one op at m rows: cuBLAS bf16; the FP8 `unit` and `triton` ways whole (activation quantization, GEMM,
    scales, split sums; compiled as in the engine); and the kernel alone at each setting with float8 activations and
    weights (w8a8), bf16 activations and float8 weights (w8a16) and bf16 weights (bf16)."""
    n, k = OPS[op]
    copies = len(bf16)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    xq, xs = fp8.quantize_tokens(x)  # the kernel-alone w8a8 rows: activations quantized beforehand
    way = {w: torch.compile(lambda x, q, s, w=w: fp8.linear(x, q, s, None, w)) for w in ("unit", "triton")}
    rows = {"cublas bf16": graph_time(lambda i: F.linear(x, bf16[i % copies]))}
    for w, fn in way.items():
        rows[f"fp8 {w}"] = graph_time(lambda i, fn=fn: fn(x, quant[i % copies][0], quant[i % copies][1][None]))
    exact = x.float() @ fp8.dequantize(*quant[0]).t()
    errors = {f"fp8 {w}": rel_err(fn(x, quant[0][0], quant[0][1][None]), exact) for w, fn in way.items()}
    operands = {"w8a8": lambda i: (xq, quant[i % copies][0], quant[i % copies][1], xs, torch.bfloat16),
                "w8a16": lambda i: (x, quant[i % copies][0], quant[i % copies][1], None, None),
                "bf16": lambda i: (x, bf16[i % copies], None, None, None)}
    tried = []
    for setting in candidates(m, n, k):
        if time.perf_counter() - T0 > deadline:
            break
        entry = {"setting": list(setting)}
        for label, args in operands.items():
            try:
                entry[label] = graph_time(lambda i: skinny_gemm.run_kernel(*args(i)[:3], setting, *args(i)[3:]))
            except Exception as err:  # noqa: BLE001 - a setting that does not compile is reported, the rest run
                entry[f"{label}_error"] = f"{type(err).__name__}: {err}"[:200]
        tried.append(entry)
    best = {}
    for label in operands:
        ok = [e for e in tried if label in e]
        if ok:
            top = min(ok, key=lambda e: e[label])
            best[label] = {"us": top[label] * 1e6, "setting": top["setting"]}
            rows[f"kernel {label}"] = top[label]
    if "w8a8" in best:  # the fastest w8a8 setting with its float8 sums promoted to float32 every 32 / block_k of K
        emulated = (xq.float() * xs) @ fp8.dequantize(*quant[0]).t()
        top = skinny_gemm.Launch(*best["w8a8"]["setting"])
        for promote in (0, 32, top.block_k):
            setting = top._replace(promote=promote)
            y = skinny_gemm.run_kernel(xq, *quant[0], setting, xs, torch.float32)
            errors[f"kernel w8a8 promote {promote} vs emulate"] = rel_err(y if y.dim() == 2 else y.sum(0), emulated)
            if promote:
                rows[f"kernel w8a8 promote {promote}"] = graph_time(
                    lambda i: skinny_gemm.run_kernel(*operands["w8a8"](i)[:3], setting, *operands["w8a8"](i)[3:]))
    nbytes = {"cublas bf16": 2, "kernel bf16": 2}
    summary = {kind: {"us": t * 1e6, "GBps": n * k * nbytes.get(kind, 1) / t / 1e9} for kind, t in rows.items()}
    return {"op": op, "rows": m, "n": n, "k": k, "launch": list(skinny_gemm.launch(m, n, k)), "summary": summary,
            "best": best, "rel_err": errors, "tried": tried}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--deadline", type=float, default=300.0, help="seconds; the sweep stops trying settings after")
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 16])
    args = ap.parse_args()
    torch._dynamo.config.cache_size_limit = 64  # one compiled `matmul` per launch setting
    if not torch.cuda.is_available():
        raise SystemExit("decode_gemm.py needs a CUDA GPU (compute capability 8.9+)")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "results": []}
    budget = args.deadline / (len(OPS) * len(args.rows))
    for op, (n, k) in OPS.items():
        bf16, quant = weights(n, k, max(2, -(-200 * 2**20 // (n * k * 2))))
        for m in args.rows:
            done = len(report["results"])
            result = sweep_op(op, m, bf16, quant, budget * (done + 1))
            report["results"].append(result)
            s = result["summary"]
            print(f"[{time.perf_counter() - T0:6.1f}s] {op:8s} x{m:<3d} " + "  ".join(
                f"{kind} {v['us']:.1f}us {v['GBps']:.0f}GB/s" for kind, v in s.items()), result["best"], result["rel_err"], flush=True)
            (args.out / "decode_gemm.json").write_text(json.dumps(report, indent=1))
        del bf16, quant
        torch.cuda.empty_cache()
    kinds = ("cublas bf16", "kernel bf16", "fp8 unit", "fp8 triton", "kernel w8a8", "kernel w8a16")
    print(f"{'op':>8} {'rows':>4} " + " ".join(f"{k:>26}" for k in kinds))
    totals: dict = {}
    for r in report["results"]:
        cells = []
        for kind in kinds:
            v = r["summary"].get(kind)
            cells.append(f"{v['us']:8.1f}us {v['GBps']:6.0f}GB/s" if v else " " * 26)
            if v:
                totals[(kind, r["rows"])] = totals.get((kind, r["rows"]), 0.0) + v["us"]
        print(f"{r['op']:>8} {r['rows']:>4} " + " ".join(f"{c:>26}" for c in cells))
    for m in args.rows:
        print(f"{'layer':>8} {m:>4} " + " ".join(f"{totals.get((kind, m), float('nan')):22.1f}us   " for kind in kinds))
    report["layer_us"] = {f"{kind} x{m}": t for (kind, m), t in totals.items()}
    (args.out / "decode_gemm.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
