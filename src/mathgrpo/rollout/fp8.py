"""FP8 rollouts: float8_e4m3fn weights with one scale per output channel, activations quantized per token.

A decode step is bound by reading the weights; in FP8 the projections take half the bytes. The GEMM multiplies
float8 operands on the tensor cores (compute capability 8.9 and up: L4, L40, H100, H200) and applies the row
scales of the activations and the column scales of the weights, so y[m, n] = sx[m] sw[n] sum_k xq[m, k] wq[n, k].
Four ways to run it (`GEMMS`):

- `rowwise`: one `_scaled_mm` with both scale vectors applied in its epilogue (CUTLASS, bf16 out);
- `unit` (the default below sm_90): `_scaled_mm` with unit scales (cuBLASLt, float32 out), the scales applied
  after (fused by torch.compile into the next elementwise kernel): the same numbers, faster than `rowwise` at
  decode's 16 and 64 rows on an H100 (not measured on sm_89 cards);
- `triton` (the default on cards of compute capability 9.0+, `default_way`): the same operands through the
  skinny-GEMM kernel of `skinny_gemm`, both scales in its epilogue (its 64-row tiles accumulate as cuBLAS's fast
  mode does: within 0.002 of the emulation where `unit` is within 0.0007); on an H100 its kernel alone takes 0.6
  of the time `unit` takes whole at decode's 16 and 64 rows (`benchmarks/decode_gemm.py`); above 64 rows (a
  prefill, a big decode batch) it runs as `unit`;
- `emulate`: dequantize and multiply in float32 (any device): the arithmetic the three above approximate,
  for CPU tests of the whole engine.

The output head and the embedding stay in the model's dtype: the head decides the sampled token and its
log-prob directly, and its single large GEMM reads as many bytes as four layers, not a fortieth of the step.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import Error
from ..model.card import Card, fp8_problem
from . import skinny_gemm

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # largest finite float8_e4m3fn
TINY = 1e-12  # floor of a scale: an all-zero row quantizes to zeros, not NaN
GEMMS = ("rowwise", "unit", "triton", "emulate")
DEFAULT_WAY = "unit"  # where `triton` is not the default (default_way): cards below sm_90 (L4 not measured), no Triton


class PrecisionRefused(Error, ValueError):
    """rollout.precision asks for FP8 rollouts where they cannot run (the card, the engine, the LoRA mode); the
    message says why."""


def default_way(card: Card) -> str:
    """The FP8 way for projections on `card`: `triton` where the skinny-GEMM kernel serves it (sm_90+, measured on
    an H100: benchmarks/decode_gemm.py), else DEFAULT_WAY."""
    return "triton" if skinny_gemm.serves_card(card.capability) else DEFAULT_WAY


def unsupported_reason(card: Card) -> Optional[str]:
    """None where FP8 GEMMs can run on `card` (compute capability 8.9+, `model.card.fp8_problem`) with this torch,
    else one line saying why not."""
    problem = fp8_problem(card)
    if problem:
        return problem
    if not hasattr(torch, "_scaled_mm"):
        return f"FP8 needs torch._scaled_mm, which torch {torch.__version__} lacks"
    return None


def precision_problem(precision: str, engine: str, lora: str, card: Card, emulated: bool = False,
                      triton: bool = True) -> Optional[str]:
    """None when rollout.precision can run with this engine (the setting or the chosen one), LoRA mode and card,
    else one line saying why not (`emulated`: FP8 GEMMs emulated, tests only: no card requirement; `triton`: the
    Triton attention kernel, the only reader of an FP8 KV cache, runs here)."""
    if not precision.startswith("fp8"):
        return None
    reason = None if emulated else unsupported_reason(card)
    if reason:
        return reason
    if engine == "hf":
        return "FP8 rollouts need rollout.engine=native (or auto on a GPU); hf generates in the model's dtype"
    if lora != "merge":
        return "FP8 rollouts quantize the LoRA-merged weights; use rollout.lora=merge"
    if precision == "fp8-kv" and not triton:
        return "an FP8 KV cache is read by the Triton attention kernel only, and Triton is not available here"
    return None


def quantize_rows(weight: torch.Tensor, out: torch.Tensor, scale: torch.Tensor) -> None:
    """Write `weight` [N, K] (any float dtype) into `out` [N, K] float8_e4m3fn with one scale per row into
    `scale` [N] float32: weight ~= out * scale[:, None]. In place, so captured graphs keep their addresses."""
    w = weight.float()
    row = (w.abs().amax(dim=1) / E4M3_MAX).clamp_min(TINY)
    scale.copy_(row)
    out.copy_((w / row[:, None]).clamp_(-E4M3_MAX, E4M3_MAX))


def quantize_tokens(x: torch.Tensor) -> tuple:
    """x [..., K] -> (float8_e4m3fn [..., K], float32 scales [..., 1]) with x ~= q * scale, one scale per vector
    along the last axis (a token's activations; a cached key of one head)."""
    xf = x.float()
    scale = (xf.abs().amax(dim=-1, keepdim=True) / E4M3_MAX).clamp_min(TINY)
    return (xf / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 values FP8 `q` [N, K] with row scales `scale` ([N] or [N, 1]) stands for."""
    return q.float() * scale.reshape(-1, 1)


def linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor], gemm: str,
           unit: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [..., K] @ (weight [N, K] FP8 * scale [1, N])^T + bias, in x's dtype; `gemm` one of GEMMS. `unit`: a float32
    1 on the device for the `unit` way's tensor-wide scales, kept by the caller (made here otherwise: inside the
    captured decode step that is a kernel a projection)."""
    lead, k = x.shape[:-1], x.shape[-1]
    xq, xs = quantize_tokens(x.reshape(-1, k))
    if gemm == "triton" and xq.shape[0] > skinny_gemm.MAX_FP8_ROWS:
        gemm = "unit"  # a prefill's many rows: cuBLASLt's large tiles suit them (the same operands and scales)
    if gemm == "triton":
        return skinny_gemm.matmul(xq, weight, scale, xs, x.dtype, bias=bias).reshape(*lead, weight.shape[0])
    if gemm == "rowwise":
        y = torch._scaled_mm(xq, weight.t(), scale_a=xs, scale_b=scale, out_dtype=x.dtype).float()
    elif gemm == "unit":
        one = unit if unit is not None else torch.ones((), device=x.device, dtype=torch.float32)
        y = torch._scaled_mm(xq, weight.t(), scale_a=one, scale_b=one, out_dtype=torch.float32) * xs * scale
    elif gemm == "emulate":
        y = (xq.float() * xs) @ dequantize(weight, scale).t()
    else:
        raise ValueError(f"fp8 gemm={gemm!r}; use one of {', '.join(GEMMS)}")
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*lead, weight.shape[0])
