"""Skinny products on the tensor cores: the decode step's projections of a few rows (16 to 64) by a Triton kernel.

A decode step multiplies a few rows by each weight matrix once, so it is bound by reading the weights, and the
library GEMMs pick tiles made for larger products: at 16 and 64 rows cuBLASLt's FP8 GEMM read the 4B layer's FP8
weights at about 0.7-1.7 TB/s on an H100, this kernel at 1.5-2.5 (`benchmarks/decode_gemm.py`). It serves:

- the `triton` FP8 way (fp8.py), the default on cards of compute capability 9.0+: float8 activations with one
  scale a row (quantized upstream, as the `unit` way does) times float8 weights with one scale an output channel,
  both scales applied to the sums. On sm_90, 64-row tiles (wgmma) accumulate float8 products as cuBLAS's
  fast-accumulation mode does (Triton's default there);
- with `rollout.skinny_gemm` (on by default since the default recipe decoding at 16 rows through it learned as through
  cuBLAS, docs/performance.md), the engine's packed bf16 / fp16 copies on sm_90+ in decode steps of at most
  `MAX_ROWS` rows, where its tiles beat cuBLAS by a little.

The grid is (row tiles, column tiles, K splits). With one split a program writes its [BLOCK_M, BLOCK_N] tile in
the output dtype; with several (for the narrow projections, whose column tiles alone would leave SMs idle) each
writes a float32 partial sum and `matmul` adds them in a fixed order (no atomics: a seed's rollouts repeat; under
torch.compile the sum fuses into the next kernel). `launch(m, n, k)` picks the tiles.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the FP8 way is then `unit`, bf16 copies use F.linear
    triton = None


MAX_ROWS = 16  # bf16 / fp16 weights: up to here the kernel beat cuBLAS on an H100 (at 64 rows it ties)
MAX_FP8_ROWS = 64  # the FP8 `triton` way: the rows swept; more (a prefill, a big decode batch) go to cuBLASLt
CAPABILITY = (9, 0)  # the kernel serves cards from here (measured on an H100 only; L4 and others keep the libraries)
DTYPES = (torch.bfloat16, torch.float16)  # weights it takes in the model's dtype (float32 would multiply as TF32)


def available() -> bool:
    """True when Triton can be imported (the kernel is meant for CUDA; tests run it interpreted)."""
    return triton is not None


class Launch(NamedTuple):
    """Tile sizes and launch settings of one product."""

    block_m: int
    block_n: int
    block_k: int
    split: int  # K splits (1: the kernel writes the output itself)
    warps: int = 4
    stages: int = 3
    promote: int = 0  # float8 products: add the tensor cores' sums into float32 every this many of K (0: Triton's default)


def launch(m: int, n: int, k: int, weight_bytes: int = 1) -> Launch:
    """The tiles for x [m, k] @ w [n, k]^T (`weight_bytes` a weight): all rows in one tile up to 64 (more: tiles
    of 64), columns in tiles of 32, K split in two until about 300 programs run (each split at least 1,024 deep),
    and K tiles of 256 bytes a weight row (128 with a 64-row tile over the whole of K). Chosen from
    `benchmarks/decode_gemm.py`'s sweep of the Qwen3-4B projections on an H100, where it is within 0.5 us of the
    fastest setting tried for each at 16 and 64 rows with FP8 weights and at 16 rows with bf16 weights."""
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    tiles = -(-n // 32) * -(-m // block_m)
    split = 1
    while tiles * split < 300 and k // (split * 2) >= 1024:
        split *= 2
    depth = 128 if block_m == 64 and split == 1 else 256
    return Launch(block_m, 32, depth // weight_bytes, split, 4, 3)


if triton is not None:

    @triton.jit
    def _kernel(X, XS, W, S, Y, M, N, K, stride_xm, stride_wn, stride_ys, stride_ym, k_span,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN: tl.constexpr,
                X_FP8: tl.constexpr, HAS_SCALE: tl.constexpr, PROMOTE: tl.constexpr):
        """One [BLOCK_M, BLOCK_N] tile of x @ (w * s)^T over K positions [split * k_span, (split + 1) * k_span),
        stored at Y + split * stride_ys in Y's dtype. EVEN: M, N and K fill whole tiles (no masks). X_FP8: x is
        float8 too, with one scale a row at XS (both operands go to the tensor cores as they are). HAS_SCALE: one
        scale an output channel at S (float8 weights). PROMOTE: with X_FP8, the float8 products' partial sums go into
        the float32 accumulator every PROMOTE positions of K (0: Triton's default, on sm_90 wgmma tiles never)."""
        pid_m = tl.program_id(0)  # row tiles vary fastest: the programs sharing a weight tile run together (L2)
        pid_n = tl.program_id(1)
        split = tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        lo = split * k_span
        hi = tl.minimum(lo + k_span, K)
        x_ptr = X + offs_m[:, None] * stride_xm + (lo + offs_k)[None, :]
        w_ptr = W + offs_n[:, None].to(tl.int64) * stride_wn + (lo + offs_k)[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(lo, hi, BLOCK_K):
            if EVEN:
                x = tl.load(x_ptr)
                w = tl.load(w_ptr)
            else:
                in_k = (k0 + offs_k) < hi
                x = tl.load(x_ptr, mask=(offs_m[:, None] < M) & in_k[None, :], other=0.0)
                w = tl.load(w_ptr, mask=(offs_n[:, None] < N) & in_k[None, :], other=0.0)
            if X_FP8 and PROMOTE > 0:
                acc = tl.dot(x, tl.trans(w), acc, max_num_imprecise_acc=PROMOTE)
            elif X_FP8:
                acc = tl.dot(x, tl.trans(w), acc)
            else:
                acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
            x_ptr += BLOCK_K
            w_ptr += BLOCK_K
        y = acc
        if HAS_SCALE:
            y = y * tl.load(S + offs_n, mask=offs_n < N, other=0.0)[None, :]
        if X_FP8:
            y = y * tl.load(XS + offs_m, mask=offs_m < M, other=0.0)[:, None]
        y_ptr = Y + split * stride_ys + offs_m[:, None] * stride_ym + offs_n[None, :]
        if EVEN:
            tl.store(y_ptr, y.to(Y.dtype.element_ty))
        else:
            tl.store(y_ptr, y.to(Y.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def run_kernel(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor], setting: Launch,
               x_scale: Optional[torch.Tensor] = None, out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Launch the kernel: x [M, K] (bf16 / fp16, or float8 with row scales `x_scale` [M]; rows contiguous), weight
    [N, K] (float8 with `scale` [N] float32, or x's dtype and no scale) -> [M, N] in `out_dtype` (default x's
    dtype) with one split, or [split, M, N] float32 partial sums with several."""
    m, k = x.shape
    n = weight.shape[0]
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("skinny_gemm: x and weight need contiguous rows")
    if (weight.element_size() == 1) != (scale is not None) or (x.element_size() == 1) != (x_scale is not None):
        raise ValueError("skinny_gemm: float8 operands need their scales (weight: scale, x: x_scale), others none")
    if x.element_size() == 1 and weight.element_size() != 1:
        raise ValueError(f"skinny_gemm: float8 x needs float8 weights, not {weight.dtype}")
    if weight.shape[1] != k or weight.device != x.device:
        raise ValueError(f"skinny_gemm: x [{m}, {k}] on {x.device} and weight {list(weight.shape)} on {weight.device} "
                         "do not multiply (weight [N, K] on x's device)")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(f"skinny_gemm: the kernel runs on a CUDA GPU (x is on {x.device}); use F.linear there")
    bm, bn, bk, split, warps, stages, promote = setting
    span, split = _splits(k, bk, split)
    dtype = out_dtype or x.dtype
    out = torch.empty((m, n) if split == 1 else (split, m, n), device=x.device, dtype=dtype if split == 1 else torch.float32)
    even = m % bm == 0 and n % bn == 0 and k % span == 0
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn), split)
    dummy = x  # a pointer for the scales a launch does not read
    _kernel[grid](x, dummy if x_scale is None else x_scale.reshape(-1).contiguous(), weight,
                  dummy if scale is None else scale.reshape(-1).contiguous(),
                  out, m, n, k, x.stride(0), weight.stride(0), m * n if split > 1 else 0, n, span, BLOCK_M=bm,
                  BLOCK_N=bn, BLOCK_K=bk, EVEN=even, X_FP8=x_scale is not None, HAS_SCALE=scale is not None,
                  PROMOTE=promote, num_warps=warps, num_stages=stages)
    return out


def serves_card(capability: Optional[tuple]) -> bool:
    """Whether the kernel serves a CUDA card of compute `capability` ((major, minor); None: the CPU) here: sm_90 or
    newer (where it was measured) with Triton installed."""
    return triton is not None and capability is not None and tuple(capability) >= CAPABILITY


def serves(device: torch.device, dtype: Optional[torch.dtype] = None) -> bool:
    """`serves_card` for `device` and, given, weights of `dtype` in the model's precision (`DTYPES` only)."""
    if device.type != "cuda" or not serves_card(torch.cuda.get_device_capability(device)):
        return False
    return dtype is None or dtype in DTYPES


def _splits(k: int, block_k: int, split: int) -> tuple:
    """(K positions a split covers, how many splits there are) when `split` are asked: each split a whole number
    of K tiles, so a short K gets fewer."""
    span = -(-k // (split * block_k)) * block_k
    return span, -(-k // span)


@torch.library.custom_op("mathgrpo::skinny_mm", mutates_args=())
def _skinny_mm(x: torch.Tensor, x_scale: Optional[torch.Tensor], weight: torch.Tensor, scale: Optional[torch.Tensor],
               out_dtype: torch.dtype, block_m: int, block_n: int, block_k: int, split: int, warps: int,
               stages: int, promote: int) -> torch.Tensor:
    """The kernel as one opaque operator, so torch.compile calls it as it is inside a compiled decode step."""
    setting = Launch(block_m, block_n, block_k, split, warps, stages, promote)
    return run_kernel(x, weight, scale, setting, x_scale, out_dtype)


@_skinny_mm.register_fake
def _(x, x_scale, weight, scale, out_dtype, block_m, block_n, block_k, split, warps, stages, promote):
    m, k = x.shape
    parts = _splits(k, block_k, split)[1]
    if parts == 1:
        return x.new_empty((m, weight.shape[0]), dtype=out_dtype)
    return x.new_empty((parts, m, weight.shape[0]), dtype=torch.float32)


def matmul(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor] = None,
           x_scale: Optional[torch.Tensor] = None, out_dtype: Optional[torch.dtype] = None,
           setting: Optional[Launch] = None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [M, K] @ weight [N, K]^T + bias by the kernel, in `out_dtype` (default x's dtype): float8 weights with
    their channel scales `scale` [N] (or [1, N]), float8 x with its row scales `x_scale` [M] (or [M, 1]). The
    partial sums of a split K and the bias are added in float32 (splits in order), then rounded once."""
    if triton is None:
        raise RuntimeError("the Triton skinny GEMM needs Triton, which is not installed here")
    m, k = x.shape
    dtype = out_dtype or x.dtype
    setting = setting or launch(m, weight.shape[0], k, weight.element_size())
    y = _skinny_mm(x.contiguous(), x_scale, weight, scale, dtype if bias is None else torch.float32, *setting)
    if y.dim() == 3:
        y = y.sum(0)
    if bias is not None:
        y = y + bias.float()
    return y.to(dtype)
