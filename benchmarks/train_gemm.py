"""Training-shape GEMMs of one Qwen3-4B layer: bf16 against FP8 (float8_e4m3fn weights, one scale per output
channel; activations quantized per token), forward and the backward's input gradient, on one GPU.

The question it answers: how much of a forward + backward pass FP8 base weights could save at the sizes training
runs (thousands of tokens a pass), where a decode step's 16-64 rows are bound by reading the weights instead.
Every projection of the layer as the model holds it (q, k, v, o, gate, up, down); each way timed with CUDA
events over `--reps` calls after a warm-up, the activation quantization timed with the GEMM where the way needs it.

    PYTHONPATH=src python3 benchmarks/train_gemm.py --tokens 20480 8192 --out /tmp/train_gemm.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from _subject import QWEN3_4B, cuda_ms  # benchmarks/ is on the path when this script runs
from mathgrpo.rollout.fp8 import quantize_tokens as quantize_rows  # one float32 scale a row: x ~= q * scale

_H, _Q, _KV, _I = (QWEN3_4B["hidden_size"], QWEN3_4B["num_attention_heads"] * QWEN3_4B["head_dim"],
                   QWEN3_4B["num_key_value_heads"] * QWEN3_4B["head_dim"], QWEN3_4B["intermediate_size"])
PROJECTIONS = {"q": (_H, _Q), "k": (_H, _KV), "v": (_H, _KV), "o": (_Q, _H), "gate": (_H, _I), "up": (_H, _I),
               "down": (_I, _H)}  # name -> (in, out) features


def ways(m: int, k: int, n: int, dev: str = "cuda") -> dict:
    """name -> zero-argument callable for the projection x [m, k] -> [m, n] and its input gradient."""
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    g = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k ** 0.5
    wq, ws = quantize_rows(w)  # [n, k], [n, 1]
    ws_row = ws.reshape(1, n).contiguous()
    wq_t = wq.t().contiguous()  # [k, n] row-major: the backward's operand as _scaled_mm wants it (column-major [n, k])
    xq, xs = quantize_rows(x)
    one, ones_k = torch.ones((), device=dev), torch.ones(1, k, device=dev)
    w_deq = (wq.float() * ws).to(torch.bfloat16)

    def fp8_forward():
        q, s = quantize_rows(x)
        return torch._scaled_mm(q, wq.t(), scale_a=s, scale_b=ws_row, out_dtype=torch.bfloat16)

    def fp8_backward():
        gq, gs = quantize_rows(g.float() * ws_row)  # g scaled by the weight's row scales, per token
        return torch._scaled_mm(gq, wq_t.t(), scale_a=gs, scale_b=ones_k, out_dtype=torch.bfloat16)

    return {
        "bf16 forward": lambda: x @ w.t(),
        "fp8 rowwise forward, quantized operand": lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws_row,
                                                                            out_dtype=torch.bfloat16),
        "fp8 rowwise forward with quantization": fp8_forward,
        "fp8 tensorwise forward, quantized operand": lambda: torch._scaled_mm(xq, wq.t(), scale_a=one, scale_b=one,
                                                                               out_dtype=torch.bfloat16),
        "bf16 backward dx": lambda: g @ w,
        "bf16 backward dx from dequantized weight": lambda: g @ (wq.float() * ws).to(torch.bfloat16),
        "bf16 backward dx, weight dequantized before": lambda: g @ w_deq,
        "fp8 rowwise backward dx with quantization": fp8_backward,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", nargs="+", type=int, default=[20480, 8192])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    rows = []
    for m in args.tokens:
        totals: dict = {}
        for name, (k, n) in PROJECTIONS.items():
            for way, fn in ways(m, k, n).items():
                ms = cuda_ms(fn, args.reps)
                tflops = 2 * m * k * n / ms / 1e9
                rows.append({"tokens": m, "projection": name, "way": way, "ms": ms, "tflops": tflops})
                totals[way] = totals.get(way, 0.0) + ms
            torch.cuda.empty_cache()
        for way, ms in totals.items():
            rows.append({"tokens": m, "projection": "layer", "way": way, "ms": ms})
    card = torch.cuda.get_device_name(0)
    if args.out:
        args.out.write_text(json.dumps({"card": card, "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"{card}, torch {torch.__version__}; one Qwen3-4B layer's seven projections, ms")
    for r in rows:
        if r["projection"] == "layer":
            print(f"{r['tokens']:>6} tokens  {r['way']:45} {r['ms']:8.3f}")


if __name__ == "__main__":
    main()
