"""The forward pass of a Qwen3 / Qwen2 / Llama decoder over `ModelWeights`, written for a static KV cache.

The arithmetic follows transformers' modeling code step by step (RMSNorm in float32 then cast,
rotary tables in float32, softmax in float32) so that greedy decoding on CPU is token-identical.
Attention handles grouped heads natively: the query heads that share a key/value head are folded
into the query-length axis ([B, KV, G*T, D]), so keys and values are never repeated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import fp8, skinny_gemm
from .weights import LayerWeights, ModelWeights, Proj


def linear(x: torch.Tensor, proj: Proj) -> torch.Tensor:
    """x W^T + b, plus LoRA's low-rank terms (B (A x)) * scale when the engine applies them; FP8 weights
    (a `scale` beside them) go through fp8.linear, and copies marked `triton` through the skinny-GEMM kernel
    when x has at most `skinny_gemm.MAX_ROWS` rows."""
    if proj.scale is not None:
        return fp8.linear(x, proj.weight, proj.scale, proj.bias, proj.gemm, proj.unit)
    k = x.shape[-1]
    if proj.gemm == "triton" and x.numel() <= skinny_gemm.MAX_ROWS * k and not proj.lora:
        return skinny_gemm.matmul(x.reshape(-1, k), proj.weight, bias=proj.bias).reshape(*x.shape[:-1], proj.weight.shape[0])
    y = F.linear(x, proj.weight, proj.bias)
    for a, b, scale in proj.lora:
        # PEFT keeps adapters in float32: add in their precision, then back to the base dtype as PEFT does
        y = (y + F.linear(F.linear(x.to(a.dtype), a), b) * scale).to(x.dtype)
    return y


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis, in float32, cast back before the weight (as transformers does)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rope_tables(positions: torch.Tensor, w: ModelWeights, dtype: torch.dtype) -> tuple:
    """(cos, sin) [B, T, head_dim] for integer positions [B, T]."""
    freqs = positions[..., None].float() * w.inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * w.rope_scale).to(dtype), (emb.sin() * w.rope_scale).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, heads, T, D] by the tables [B, T, D] (rotate-half convention)."""
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def project_qkv(layer: LayerWeights, w: ModelWeights, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                rotate: bool = True) -> tuple:
    """Residual stream x [B, T, hidden] -> q [B, H, T, D], k and v [B, KV, T, D], rotary applied.

    rotate=False stops after the projections: q [B, T, H*D], k and v [B, T, KV*D] (views of one tensor when
    packed) with neither the q / k norms nor the rotary applied, for an attention kernel that applies them."""
    bsz, t, _ = x.shape
    h = rms_norm(x, layer.ln1, w.eps)
    if layer.qkv is not None:  # packed: one GEMM, then the q, k and v columns
        kv_width = w.n_kv_heads * w.head_dim
        q, k, v = linear(h, layer.qkv).split([w.n_heads * w.head_dim, kv_width, kv_width], dim=-1)
    else:
        q, k, v = linear(h, layer.q), linear(h, layer.k), linear(h, layer.v)
    if not rotate:
        return q, k, v
    q = q.view(bsz, t, w.n_heads, w.head_dim)
    k = k.view(bsz, t, w.n_kv_heads, w.head_dim)
    v = v.view(bsz, t, w.n_kv_heads, w.head_dim)
    if layer.q_norm is not None:
        q = rms_norm(q, layer.q_norm, w.eps)
        k = rms_norm(k, layer.k_norm, w.eps)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def finish_layer(layer: LayerWeights, w: ModelWeights, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Output projection, residual, post-attention norm, SwiGLU MLP, residual. attn: [B, T, H*D]."""
    x = x + linear(attn, layer.o)
    h = rms_norm(x, layer.ln2, w.eps)
    if layer.gate_up is not None:  # packed: one GEMM, gate columns then up columns
        gate, up = linear(h, layer.gate_up).chunk(2, dim=-1)
    else:
        gate, up = linear(h, layer.gate), linear(h, layer.up)
    return x + linear(F.silu(gate) * up, layer.down)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, fused: bool) -> torch.Tensor:
    """Attention of q [B, H, T, D] over k, v [B, KV, L, D] with an additive mask [B, 1, T, L].

    `fused` uses SDPA (GPU); otherwise explicit matmuls and a float32 softmax as transformers'
    eager path computes them (CPU, bit-compatible greedy tests). Returns [B, T, H*D].
    """
    bsz, heads, t, dim = q.shape
    kv = k.shape[1]
    groups = heads // kv
    qg = q.reshape(bsz, kv, groups * t, dim)
    scale = dim**-0.5
    if fused:
        if t > 1:
            mask = mask[:, :, None].expand(bsz, 1, groups, t, mask.shape[-1]).reshape(bsz, 1, groups * t, -1)
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)
    else:
        scores = torch.matmul(qg, k.transpose(2, 3)) * scale
        scores = scores.view(bsz, kv, groups, t, -1) + mask[:, :, None]
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs.view(bsz, kv, groups * t, -1), v)
    # reshape, not view: SDPA's float32 kernels may return a layout a view cannot express
    return out.reshape(bsz, heads, t, dim).transpose(1, 2).reshape(bsz, t, heads * dim)


def additive_mask(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean [.., L] (True = may attend) -> additive mask with 0 / the dtype's lowest value."""
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill(~valid, torch.finfo(dtype).min)


def head_logits(w: ModelWeights, x: torch.Tensor) -> torch.Tensor:
    """Final norm and LM head of x [B, hidden] -> logits [B, V] in the model's dtype."""
    return linear(rms_norm(x, w.norm, w.eps), w.lm_head)


def logits_of(w: ModelWeights, x: torch.Tensor) -> torch.Tensor:
    """Final norm and LM head of x [B, hidden] -> float32 logits [B, V]."""
    return head_logits(w, x).float()


def finish_and_project(layer: LayerWeights, nxt: LayerWeights, w: ModelWeights, x: torch.Tensor, attn: torch.Tensor,
                       cos: torch.Tensor, sin: torch.Tensor, rotate: bool = True) -> tuple:
    """`finish_layer` of one layer, then `project_qkv` of the next -> (x, q, k, v). One function, so that a
    compiler fuses the residual add into the next layer's norm (one kernel a layer fewer in a decode step)."""
    x = finish_layer(layer, w, x, attn)
    return (x, *project_qkv(nxt, w, x, cos, sin, rotate))


def embed_and_project(layer: LayerWeights, w: ModelWeights, tokens: torch.Tensor, positions: torch.Tensor,
                      rotate: bool = True) -> tuple:
    """The start of a decode step: embed tokens [B], the rotary tables of positions [B], then `project_qkv` of
    the first layer -> (x, cos, sin, q, k, v). One function, so that a compiler fuses the small table kernels."""
    x = F.embedding(tokens[:, None], w.embed)
    cos, sin = rope_tables(positions[:, None], w, x.dtype)
    return (x, cos, sin, *project_qkv(layer, w, x, cos, sin, rotate))


def finish_and_head(layer: LayerWeights, w: ModelWeights, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """`finish_layer` of the last layer, then the final norm and LM head -> logits [B, V] in the model's dtype."""
    return head_logits(w, finish_layer(layer, w, x, attn)[:, 0])


@dataclass(frozen=True)
class DecodeFns:
    """The parts of a decode step between the attention calls; the engine passes compiled versions on a GPU."""

    first: Callable = embed_and_project  # the embedding, the rotary tables, layer 0's norm and projections
    bridge: Callable = finish_and_project  # a layer's output side, then the next layer's projections
    last: Callable = finish_and_head  # the last layer's output side, the final norm and the LM head
    rotate: bool = True  # False: q and k reach `attend` raw (its kernel applies the q / k norms and the rotary)


def prefill(w: ModelWeights, ids: torch.Tensor, pad: torch.Tensor, store: Callable, fused: bool) -> torch.Tensor:
    """Run left-padded prompts ids [P, T] (pad [P] leading pads each) through the model.

    `store(layer_index, k, v)` receives each layer's rotated keys and values [P, KV, T, D] for the
    cache. Returns the float32 logits of each prompt's last position [P, V].
    """
    n, t = ids.shape
    dtype = w.embed.dtype
    slots = torch.arange(t, device=ids.device)
    positions = (slots[None] - pad[:, None]).clamp_min(0)
    cos, sin = rope_tables(positions, w, dtype)
    valid = (slots[None, None, :] <= slots[None, :, None]) & (slots[None, None, :] >= pad[:, None, None])
    mask = additive_mask(valid[:, None], dtype)  # [P, 1, T, T]
    x = F.embedding(ids, w.embed)
    for i, layer in enumerate(w.layers):
        q, k, v = project_qkv(layer, w, x, cos, sin)
        store(i, k, v)
        x = finish_layer(layer, w, x, grouped_attention(q, k, v, mask, fused))
    return logits_of(w, x[:, -1])


def decode_layers(w: ModelWeights, tokens: torch.Tensor, positions: torch.Tensor, attend: Callable,
                  fns: Optional[DecodeFns] = None) -> torch.Tensor:
    """One decode step for tokens [B] at positions [B] -> logits [B, V] in the model's dtype.

    `attend(layer_index, q, k, v, cos, sin)` writes k, v [B, KV, 1, D] into the cache and returns the
    attention output [B, 1, H*D] (with `fns.rotate` False, q, k and v come as `project_qkv(rotate=False)`
    returns them and attend applies the q / k norms and the rotary tables cos, sin [B, 1, D]); `fns` holds the
    rest of the step (`DecodeFns()`: plain functions).
    """
    fns = fns or DecodeFns()
    layers = w.layers
    x, cos, sin, q, k, v = fns.first(layers[0], w, tokens, positions, fns.rotate)
    for i, layer in enumerate(layers[:-1]):
        x, q, k, v = fns.bridge(layer, layers[i + 1], w, x, attend(i, q, k, v, cos, sin), cos, sin, fns.rotate)
    return fns.last(layers[-1], w, x, attend(len(layers) - 1, q, k, v, cos, sin))
