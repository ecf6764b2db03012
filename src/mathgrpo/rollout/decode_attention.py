"""Decode attention (one new token per sequence) over a static KV cache that reads only filled positions.

A Triton split-K kernel: one program per (sequence, key/value head, split), all the query heads of
the group in one tile, so grouped heads cost no repeated keys. Each row's filled positions
[pad_b, slot] (read from device tensors, so one captured graph serves every length) are cut into
equal splits. The prompt part may live in a cache of its own with one row per prompt (the G samples
of a prompt then share its keys in memory and in the reads) and the completion part in the rows'
cache. The program whose split holds the new position also writes that position's key and value into
the cache (no separate copy kernel per layer), and given the raw projections each program applies the
q / k norms and the rotary itself (no separate kernels for them either). The caches may hold float8 keys and values with one scale
per position and head (`scales`). A second kernel merges the splits (log-sum-exp weights); with one
split a row the first writes the output itself.
Triton is optional: without it `available()` is False and the engine uses SDPA over length buckets.
"""

from __future__ import annotations

from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None


def available() -> bool:
    """True when Triton can be imported (the kernel itself is meant for CUDA; tests run it interpreted)."""
    return triton is not None


if triton is not None:

    @triton.jit
    def _attend_range(q, k_base, v_base, stride_ks, stride_vs, ks_base, vs_base, lo, hi, m, l, acc, scale_log2,
                      D: tl.constexpr, BLOCK_N: tl.constexpr, KV_FP8: tl.constexpr):
        """Fold positions [lo, hi) of one cache row into the running (max, sum, accumulator). KV_FP8: the row
        holds float8 keys and values with one float32 scale per position at ks_base / vs_base."""
        offs_d = tl.arange(0, D)
        for n0 in range(lo, hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            valid = offs_n < hi
            k = tl.load(k_base + offs_n[:, None] * stride_ks + offs_d[None, :], mask=valid[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k.to(q.dtype))) * scale_log2
            if KV_FP8:
                s = s * tl.load(ks_base + offs_n, mask=valid, other=0.0)[None, :]
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(s - m_new[:, None])
            l = l * alpha + tl.sum(p, 1)
            v = tl.load(v_base + offs_n[:, None] * stride_vs + offs_d[None, :], mask=valid[:, None], other=0.0)
            if KV_FP8:
                p = p * tl.load(vs_base + offs_n, mask=valid, other=0.0)[None, :]
            acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype))
            m = m_new
        return m, l, acc

    @triton.jit
    def _store_new(x, ptr, scale_ptr, KV_FP8: tl.constexpr):
        """Write the float32 vector x [D] to the cache at ptr (float8 with its scale at scale_ptr under KV_FP8);
        returns the values later steps will read back, as float32."""
        if KV_FP8:
            scale = tl.maximum(tl.max(tl.abs(x), 0) / 448.0, 1e-12)
            stored = tl.minimum(tl.maximum(x / scale, -448.0), 448.0).to(ptr.dtype.element_ty)
            tl.store(scale_ptr, scale)
        else:
            scale = 1.0
            stored = x.to(ptr.dtype.element_ty)
        tl.store(ptr, stored)
        return stored.to(tl.float32) * scale

    @triton.jit
    def _normed_rotated(x, x_half, cos_ptr, sin_ptr, w_ptr, eps, NORM: tl.constexpr, D: tl.constexpr):
        """Rows x [R, D] of raw projections (x_half: the same rows read at column (d + D/2) % D) -> RMSNorm'd
        with the weight at w_ptr (when NORM) and rotated by the tables at cos_ptr / sin_ptr (rotate-half
        convention), float32. The normalised rows are rounded to x's dtype before the weight, as the model does;
        the weight, the rotary's products and their sum stay in float32 (the caller rounds once), as the compiled
        path computed them before (inductor keeps intermediates in float32), where eager PyTorch rounds each."""
        offs_d = tl.arange(0, D)
        half = (offs_d + D // 2) % D
        xf = x.to(tl.float32)
        xf_half = x_half.to(tl.float32)
        if NORM:
            r = tl.rsqrt(tl.sum(xf * xf, 1) / D + eps)
            xf = (xf * r[:, None]).to(x.dtype).to(tl.float32) * tl.load(w_ptr + offs_d).to(tl.float32)[None, :]
            xf_half = (xf_half * r[:, None]).to(x.dtype).to(tl.float32) * tl.load(w_ptr + half).to(tl.float32)[None, :]
        cos = tl.load(cos_ptr + offs_d).to(tl.float32)
        sin = tl.load(sin_ptr + offs_d).to(tl.float32)
        sign = tl.where(offs_d < D // 2, -1.0, 1.0)
        return xf * cos[None, :] + (sign * sin)[None, :] * xf_half

    @triton.jit
    def _partial_kernel(
        Q, PK, PV, K, V, PAD, SLOT, SRC, WIDTH, ACC, M, L, OUT, KNEW, VNEW, KS, VS, PKS, PVS, COS, SIN, QW, KW,
        stride_qb, stride_qh, stride_pkb, stride_pkh, stride_pks, stride_pvb, stride_pvh, stride_pvs,
        stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
        stride_knb, stride_knh, stride_vnb, stride_vnh, stride_ksb, stride_ksh, stride_pksb, stride_pksh, stride_cb,
        scale_log2, eps,
        KV_HEADS: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
        BLOCK_N: tl.constexpr, NSPLIT: tl.constexpr, HAS_NEW: tl.constexpr, KV_FP8: tl.constexpr,
        ROTARY: tl.constexpr, QK_NORM: tl.constexpr,
    ):
        """Unnormalised attention of one (sequence, kv head) over one split of its filled positions (with one
        split a row, NSPLIT == 1, the normalised output itself, into OUT).

        The filled positions [pad_b, slot] are cut into NSPLIT equal splits (balanced whatever the
        fill). Positions below WIDTH (the prompt) are read from row SRC[b] of the prompt cache PK/PV,
        so the G samples of a prompt read the same addresses (served from L2); position p >= WIDTH
        is slot p - WIDTH of row b of the completion cache K/V. HAS_NEW: the key and value of position
        slot come in KNEW / VNEW; the split that holds slot writes them into K / V (no separate copy
        kernel) and attends them from registers, the others never read that slot. ROTARY: Q and KNEW are the
        raw projections; the program applies the q / k norms (weights QW / KW, when QK_NORM) and the rotary
        tables COS / SIN of its row itself (no separate kernels for them per layer).
        """
        pid = tl.program_id(0)
        split = tl.program_id(1)
        b = pid // KV_HEADS
        h = pid % KV_HEADS
        pad = tl.load(PAD + b).to(tl.int32)
        end = tl.load(SLOT).to(tl.int32) + 1
        width = tl.load(WIDTH).to(tl.int32)
        src = tl.load(SRC + b).to(tl.int64)
        per_split = tl.cdiv(tl.cdiv(end - pad, NSPLIT), BLOCK_N) * BLOCK_N
        lo = pad + split * per_split
        hi = tl.minimum(lo + per_split, end)
        read_hi = hi
        if HAS_NEW:
            read_hi = tl.minimum(hi, end - 1)  # the new position comes from registers
        mid = tl.maximum(lo, tl.minimum(width, read_hi))
        offs_g = tl.arange(0, GP)
        offs_d = tl.arange(0, D)
        q_rows = Q + b * stride_qb + h * stride_qh + offs_g[:, None] * D
        q = tl.load(q_rows + offs_d[None, :], mask=offs_g[:, None] < G, other=0.0)
        if ROTARY:
            q_half = tl.load(q_rows + ((offs_d + D // 2) % D)[None, :], mask=offs_g[:, None] < G, other=0.0)
            q = _normed_rotated(q, q_half, COS + b * stride_cb, SIN + b * stride_cb, QW, eps, QK_NORM, D).to(q.dtype)
        m = tl.full([GP], float("-inf"), tl.float32)
        l = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, D], tl.float32)
        m, l, acc = _attend_range(q, PK + src * stride_pkb + h * stride_pkh, PV + src * stride_pvb + h * stride_pvh,
                                  stride_pks, stride_pvs, PKS + src * stride_pksb + h * stride_pksh,
                                  PVS + src * stride_pksb + h * stride_pksh, lo, mid, m, l, acc, scale_log2, D, BLOCK_N, KV_FP8)
        row_b = b.to(tl.int64)
        shift = width.to(tl.int64)  # completion slot = position - width
        scales = row_b * stride_ksb + h * stride_ksh - shift
        m, l, acc = _attend_range(q, K + row_b * stride_kb + h * stride_kh - shift * stride_ks,
                                  V + row_b * stride_vb + h * stride_vh - shift * stride_vs,
                                  stride_ks, stride_vs, KS + scales, VS + scales, mid, read_hi, m, l, acc, scale_log2,
                                  D, BLOCK_N, KV_FP8)
        if HAS_NEW:
            last = end - 1
            if (lo <= last) & (last < hi):
                slot_off = (last - width).to(tl.int64)
                k_row = KNEW + row_b * stride_knb + h * stride_knh
                if ROTARY:  # one row as a [1, D] tile, then back to [D]
                    k_new = tl.sum(_normed_rotated(tl.load(k_row + offs_d[None, :]), tl.load(k_row + ((offs_d + D // 2) % D)[None, :]),
                                                   COS + b * stride_cb, SIN + b * stride_cb, KW, eps, QK_NORM, D), 0)
                else:
                    k_new = tl.load(k_row + offs_d).to(tl.float32)
                v_new = tl.load(VNEW + row_b * stride_vnb + h * stride_vnh + offs_d).to(tl.float32)
                own_scale = row_b * stride_ksb + h * stride_ksh + slot_off
                k_new = _store_new(k_new, K + row_b * stride_kb + h * stride_kh + slot_off * stride_ks + offs_d,
                                   KS + own_scale, KV_FP8)
                v_new = _store_new(v_new, V + row_b * stride_vb + h * stride_vh + slot_off * stride_vs + offs_d,
                                   VS + own_scale, KV_FP8)
                s_new = tl.sum(q.to(tl.float32) * k_new[None, :], 1) * scale_log2
                m_new = tl.maximum(m, s_new)
                alpha = tl.exp2(m - m_new)
                p_new = tl.exp2(s_new - m_new)
                l = l * alpha + p_new
                acc = acc * alpha[:, None] + p_new[:, None] * v_new[None, :]
                m = m_new
        real = offs_g < G
        if NSPLIT == 1:  # nothing to merge: the normalised output straight to OUT, no combine kernel
            out = acc / tl.where(real, l, 1.0)[:, None]
            tl.store(OUT + (pid * G + offs_g[:, None]) * D + offs_d[None, :], out.to(OUT.dtype.element_ty), mask=real[:, None])
        else:  # only the G real query heads: the padding rows stay in registers
            row = (pid * NSPLIT + split) * G + offs_g
            tl.store(M + row, m, mask=real)
            tl.store(L + row, l, mask=real)
            tl.store(ACC + row[:, None] * D + offs_d[None, :], acc, mask=real[:, None])

    @triton.jit
    def _combine_kernel(ACC, M, L, OUT, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, NSPLIT: tl.constexpr,
                        SP: tl.constexpr):
        """Merge the splits of one (sequence, kv head): out = sum_s acc_s 2^(m_s-M) / sum_s l_s 2^(m_s-M).
        SP: NSPLIT rounded up to a power of two (the padding splits are masked off)."""
        pid = tl.program_id(0)
        offs_g = tl.arange(0, GP)
        offs_d = tl.arange(0, D)
        offs_s = tl.arange(0, SP)
        real = offs_g < G
        rows = (pid * NSPLIT + offs_s[:, None]) * G + offs_g[None, :]  # [SP, GP]
        here = (offs_s[:, None] < NSPLIT) & real[None, :]
        m_all = tl.load(M + rows, mask=here, other=float("-inf"))
        top = tl.max(m_all, 0)
        top = tl.where(real, top, 0.0)  # padding heads: no -inf - -inf
        weight = tl.exp2(m_all - top[None, :])
        denom = tl.sum(tl.load(L + rows, mask=here, other=0.0) * weight, 0)
        acc = tl.zeros([GP, D], tl.float32)
        for s in range(NSPLIT):
            row = (pid * NSPLIT + s) * G + offs_g
            w_s = tl.exp2(tl.load(M + row, mask=real, other=float("-inf")) - top)
            acc += tl.load(ACC + row[:, None] * D + offs_d[None, :], mask=real[:, None], other=0.0) * w_s[:, None]
        out = acc / tl.where(real, denom, 1.0)[:, None]
        tl.store(OUT + (pid * G + offs_g[:, None]) * D + offs_d[None, :], out.to(OUT.dtype.element_ty), mask=real[:, None])


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


class SplitKDecode:
    """Attention for one new token per sequence; holds the split scratch buffers for one batch shape."""

    # Launch settings. benchmarks/rollout.py times a grid of them on the GPU at the 4B shape and sets
    # the fastest for its run (its rollout.json, "attention_tuning"); these are near its last choice on an
    # H100, with one split a row at 64 rows (no combine kernel then; docs/performance.md).
    BLOCK_N = 64
    NUM_WARPS = 4
    NUM_STAGES = 2
    TARGET_PROGRAMS = 512  # split each row's filled positions until about this many programs run

    def __init__(self, batch: int, kv_heads: int, groups: int, head_dim: int, max_len: int, device, dtype) -> None:
        self.kv_heads, self.groups, self.head_dim = kv_heads, groups, head_dim
        self.gp = max(16, _next_pow2(groups))  # tl.dot needs at least 16 rows
        want = -(-self.TARGET_PROGRAMS // (batch * kv_heads))
        self.nsplit = max(1, min(want, max(1, max_len // self.BLOCK_N), 16))
        rows = batch * kv_heads * self.nsplit * groups
        self.acc = torch.empty(rows, head_dim, device=device, dtype=torch.float32)
        self.m = torch.empty(rows, device=device, dtype=torch.float32)
        self.l = torch.empty(rows, device=device, dtype=torch.float32)
        self.out = torch.empty(batch, kv_heads * groups * head_dim, device=device, dtype=dtype)
        self.own_rows = torch.arange(batch, device=device)
        self.no_prefix = torch.zeros(1, dtype=torch.long, device=device)
        self.no_scales = torch.zeros(1, 1, 1, dtype=torch.float32, device=device)  # stands in for the FP8 scales

    def __call__(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        pad: torch.Tensor,
        slot: torch.Tensor,
        prompt: Optional[tuple] = None,
        new: Optional[tuple] = None,
        scales: Optional[tuple] = None,
        rotary: Optional[tuple] = None,
    ) -> torch.Tensor:
        """q [B, H, 1, D]; caches [B, KV, S, D]; positions [pad_b, slot] attended. Returns [B, 1, H*D].

        prompt: (k [P, KV, W, D], v, src [B], width [1]) with src and width device tensors: positions
        below width are read from row src[b] of these prompt caches, and position p >= width from
        slot p - width of the row's own cache. By default every position is the row's own slot p.
        new: (k, v) [B, KV, 1, D] of position slot, which the kernel writes into the row caches itself
        (None: the caches hold it already).
        scales: float8 caches' per-position scales (k [B, KV, S], v, prompt k [P, KV, W], prompt v), float32.
        rotary: (cos [B, 1, D], sin, q_norm weight [D] or None, k_norm weight or None, eps): q and the new k are
        the raw projections (q [B, 1, H*D] and k [B, 1, KV*D] views do), normalised and rotated in the kernel.
        """
        bsz = q.shape[0]
        pk, pv, src, width = prompt if prompt is not None else (k_cache, v_cache, self.own_rows[:bsz], self.no_prefix)
        qg = q.reshape(bsz, self.kv_heads, self.groups, self.head_dim)
        qg = qg if qg.stride(3) == 1 and qg.stride(2) == self.head_dim else qg.contiguous()
        k_new, v_new = (t.reshape(bsz, self.kv_heads, self.head_dim) for t in new) if new is not None else (qg, qg)
        k_new, v_new = (t if t.stride(-1) == 1 else t.contiguous() for t in (k_new, v_new))
        ks, vs, pks, pvs = scales if scales is not None else (self.no_scales,) * 4
        cos, sin, q_w, k_w, eps = rotary if rotary is not None else (self.no_scales, self.no_scales, None, None, 0.0)
        cos, sin = cos.reshape(cos.shape[0], -1), sin.reshape(sin.shape[0], -1)
        if rotary is not None:
            assert (q_w is None) == (k_w is None), "the q and k norms come together (Qwen3) or not at all"
            assert cos.shape[-1] == self.head_dim and cos.shape[0] >= bsz, (tuple(cos.shape), bsz, self.head_dim)
        q_w, k_w = (t if t is not None else self.no_scales for t in (q_w, k_w))
        assert all(t.stride(-1) == 1 for t in (k_cache, v_cache, pk, pv, ks, vs, pks, pvs, cos, sin))
        assert ks.stride(0) == vs.stride(0) and ks.stride(1) == vs.stride(1) and pks.stride()[:2] == pvs.stride()[:2]
        assert cos.stride(0) == sin.stride(0)
        scale_log2 = self.head_dim**-0.5 * 1.4426950408889634
        out = self.out[:bsz]
        grid = (bsz * self.kv_heads, self.nsplit)
        _partial_kernel[grid](
            qg, pk, pv, k_cache, v_cache, pad, slot, src, width, self.acc, self.m, self.l, out, k_new, v_new, ks, vs, pks, pvs,
            cos, sin, q_w, k_w,
            qg.stride(0), qg.stride(1), pk.stride(0), pk.stride(1), pk.stride(2), pv.stride(0), pv.stride(1), pv.stride(2),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1), ks.stride(0), ks.stride(1),
            pks.stride(0), pks.stride(1), cos.stride(0),
            scale_log2, float(eps),
            KV_HEADS=self.kv_heads, G=self.groups, GP=self.gp, D=self.head_dim,
            BLOCK_N=self.BLOCK_N, NSPLIT=self.nsplit, HAS_NEW=new is not None, KV_FP8=scales is not None,
            ROTARY=rotary is not None, QK_NORM=rotary is not None and rotary[2] is not None,
            num_warps=self.NUM_WARPS, num_stages=self.NUM_STAGES,
        )
        if self.nsplit == 1:
            return out[:, None]
        _combine_kernel[(bsz * self.kv_heads,)](
            self.acc, self.m, self.l, out, G=self.groups, GP=self.gp, D=self.head_dim, NSPLIT=self.nsplit,
            SP=_next_pow2(self.nsplit), num_warps=4,
        )
        return out[:, None]
