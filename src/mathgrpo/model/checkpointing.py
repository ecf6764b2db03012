"""Which activations a checkpointed decoder layer keeps: its input alone, or also its matrix products.

Plain checkpointing keeps each layer's input and runs the whole layer forward again in backward, so every
projection GEMM runs three times a step (forward, recompute, input gradient). Keeping the matrix products'
outputs (`keep_matmuls`, PyTorch's selective activation checkpointing) makes the recompute cheap: the GEMM
and attention calls hand back what the first forward computed and only the norms, rotary and activation
function run again. It costs the GEMM outputs' memory, about 75 KB a token a layer at the Qwen3-4B shape
instead of 5 KB (`training.memory` counts it), so it pays where a micro-batch of one sequence or more
still fits.

The cached outputs are handed back by position (the n-th call of each op), which needs a layer that calls
the same ops in the same order twice, as plain checkpointing does. The rule: nothing may write into a kept
output (or a view of it) between the forward that keeps it and the recompute that reads it. PyTorch's check
for that cannot be used: it flags every in-place op it keeps, and the fused LoRA function adds its base
GEMM in place onto its low-rank product (`addmm_`; both calls come from the cache in the recompute, so the
cache holds the finished sum). What else writes in place is known: Liger's rotary kernel rotates q and k
where they lie, which on a model without q/k norms is the kept projection output (`rotates_in_place`: such
models keep plain checkpointing); Liger's SwiGLU backward writes its gradients into the kept gate and up
outputs, after the recompute has read them (each entry is read once). Tests compare these gradients with
plain checkpointing's and count what the cache holds against the memory plan.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

_aten = torch.ops.aten
# Products and attention whose outputs are kept; every other op of the layer runs again in backward.
KEPT_OPS = frozenset(
    getattr(_aten, name).default
    # not bmm: eager attention's score matrices are sequence x sequence a head, far more than they save
    for name in ("mm", "addmm", "addmm_", "_scaled_dot_product_flash_attention",
                 "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_flash_attention_for_cpu", "_flash_attention_forward")  # the last: packed passes
    if hasattr(_aten, name)
)


def _policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Keep the outputs of matrix products and attention; recompute the rest (asked for every op of a layer)."""
    return CheckpointPolicy.MUST_SAVE if op in KEPT_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def matmul_keeping_contexts() -> tuple:
    """The (forward, recompute) contexts of one checkpointed call that keep the products' outputs."""
    return create_selective_checkpoint_contexts(_policy, allow_cache_entry_mutation=True)


def checkpoint_kwargs(keep_matmuls: bool = False) -> dict:
    """Keyword arguments for `torch.utils.checkpoint.checkpoint` as the decoder layers use it (non-reentrant;
    with `keep_matmuls`, the products' outputs kept)."""
    kwargs: dict = {"use_reentrant": False}
    if keep_matmuls:
        kwargs["context_fn"] = matmul_keeping_contexts
    return kwargs


def rotates_in_place(model: Any) -> bool:
    """Whether the model's attention rotates q and k in place on its projections' outputs: Liger's rotary kernel
    (patched into the decoder's module) on a model without q/k norms (Llama, Qwen2; Qwen3 normalises first)."""
    attention = next((m for m in model.modules() if hasattr(m, "q_proj") and hasattr(m, "k_proj")), None)
    if attention is None or hasattr(attention, "q_norm"):
        return False
    rotary = getattr(sys.modules.get(type(attention).__module__), "apply_rotary_pos_emb", None)
    return "liger" in getattr(rotary, "__module__", "")


def keep_refusal(model: Any) -> Optional[str]:
    """Why this model's checkpointed layers cannot keep their products (None: they can)."""
    if rotates_in_place(model):
        return ("model.checkpoint_matmuls=true: Liger's rotary kernel rotates q and k in place on this model's kept "
                "projection outputs; set model.use_liger=false or model.checkpoint_matmuls=false")
    return None
