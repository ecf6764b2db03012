"""The policy's weights as the native engine reads them: references into the transformers model, no copies.

`collect` walks a (possibly PEFT-wrapped) Qwen3 / Qwen2 / Llama causal LM and returns views of its
own parameter tensors. LoRA is handled in one of two ways, chosen per engine:

- `merge`: `LoraMerge` adds B@A*scale into the base weights for the rollout and afterwards copies
  the exact base weights back from a snapshot (a bf16 merge-then-subtract would drift by a rounding
  step each cycle). The snapshot is taken once and retaken only when the base weight's version
  counter shows someone else wrote to it. It lives in pinned host memory, or on the GPU when the
  caller has the room (`on_device`): the copy back is then a device copy instead of a transfer of
  every projection's weights over the host link (Qwen3-4B on an H100: 0.11 s less rollout a step).
- `lowrank`: the forward adds x@A^T@B^T*scale next to each base projection; weights untouched.

A third way, `packed.py`, writes the merged weights into the engine's own copies instead (q|k|v and
gate|up as one matrix each, in the model's dtype or in FP8) and leaves the model's weights alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..model.loading import unwrap


@dataclass
class Proj:
    """One linear map y = x W^T + b (+ low-rank LoRA terms when the engine applies them itself)."""

    weight: torch.Tensor  # [out, in] a detached view of the model's parameter, or the engine's packed copy
    bias: Optional[torch.Tensor] = None  # [out]
    lora: list = field(default_factory=list)  # [(A [r, in], B [out, r], scale)] in lowrank mode
    scale: Optional[torch.Tensor] = None  # [1, out] float32 when `weight` is FP8: W ~= weight * scale^T
    gemm: str = ""  # how the projection multiplies: fp8.GEMMS for FP8 weights; "triton" (skinny_gemm) or "" (F.linear) else
    unit: Optional[torch.Tensor] = None  # float32 1 on the device: the tensor-wide scales of the `unit` way


@dataclass
class LayerWeights:
    """One decoder layer's tensors. Packed layers (packed.py) carry `qkv` and `gate_up` and no q, k, v, gate, up."""

    ln1: torch.Tensor  # [hidden] input RMSNorm weight
    q: Optional[Proj]
    k: Optional[Proj]
    v: Optional[Proj]
    o: Proj
    ln2: torch.Tensor  # [hidden] post-attention RMSNorm weight
    gate: Optional[Proj]
    up: Optional[Proj]
    down: Proj
    q_norm: Optional[torch.Tensor] = None  # [head_dim] Qwen3 only
    k_norm: Optional[torch.Tensor] = None
    qkv: Optional[Proj] = None  # [q + k + v outputs, hidden]: q, k and v in one matrix
    gate_up: Optional[Proj] = None  # [2 x intermediate, hidden]: gate then up

    def projections(self) -> list:
        """The projections a forward pass reads (packed or not)."""
        every = (self.q, self.k, self.v, self.qkv, self.o, self.gate, self.up, self.gate_up, self.down)
        return [p for p in every if p is not None]


@dataclass
class ModelWeights:
    """Everything one forward pass reads, plus the shapes it needs."""

    embed: torch.Tensor  # [V, hidden]
    layers: list
    norm: torch.Tensor  # [hidden]
    lm_head: Proj
    inv_freq: torch.Tensor  # [head_dim / 2] float32, as transformers' rotary embedding holds it
    rope_scale: float  # transformers' attention_scaling for the rope variant
    eps: float
    n_heads: int
    n_kv_heads: int
    head_dim: int
    inv_freq_source: tuple = ()  # (address, version) of the model's buffer inv_freq was converted from

    def tensors(self) -> list:
        """Every tensor a forward pass reads (a captured decode step reads them by address)."""
        out = [self.embed, self.norm, self.inv_freq]
        for layer in self.layers:
            out += [t for t in (layer.ln1, layer.ln2, layer.q_norm, layer.k_norm) if t is not None]
            for proj in layer.projections():
                out += _proj_tensors(proj)
        return out + _proj_tensors(self.lm_head)

    def fingerprint(self) -> tuple:
        """Storage addresses of every tensor read: captured graphs stay valid while these do."""
        return tuple(t.data_ptr() for t in self.tensors())


def _proj_tensors(proj: Proj) -> list:
    """The weight, bias, FP8 scales and low-rank factors of one projection."""
    out = [proj.weight] + [t for t in (proj.bias, proj.scale, proj.unit) if t is not None]
    return out + [t for a, b, _ in proj.lora for t in (a, b)]


def _is_lora(module: Any) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A")


def active_lora_terms(module: Any) -> list:
    """[(A, B, scale)] of the adapters a PEFT LoRA layer applies in its forward right now."""
    if not _is_lora(module) or getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
        return []
    terms = []
    for name in module.active_adapters:
        if name in module.lora_A:
            terms.append((module.lora_A[name].weight.detach(), module.lora_B[name].weight.detach(), float(module.scaling[name])))
    return terms


def merged_weight(module: Any) -> torch.Tensor:
    """The weight a (PEFT LoRA or plain) linear module applies: base + sum(B @ A * scale) in float32 when an
    adapter is active, else the base weight itself (detached)."""
    weight = (module.base_layer if _is_lora(module) else module).weight.detach()
    terms = active_lora_terms(module)
    if not terms:
        return weight
    merged = weight.to(torch.float32, copy=True)  # a copy also of a float32 weight: the model's stays as it is
    for a, b, scale in terms:
        merged.addmm_(b.float(), a.float(), alpha=scale)
    return merged


def _proj(module: Any, lowrank: bool) -> Proj:
    base = module.base_layer if _is_lora(module) else module
    bias = base.bias.detach() if base.bias is not None else None
    return Proj(base.weight.detach(), bias, active_lora_terms(module) if lowrank else [])


def _layer(layer: Any, lowrank: bool) -> LayerWeights:
    attn, mlp = layer.self_attn, layer.mlp
    q_norm = getattr(attn, "q_norm", None)
    k_norm = getattr(attn, "k_norm", None)
    return LayerWeights(
        ln1=layer.input_layernorm.weight.detach(),
        q=_proj(attn.q_proj, lowrank),
        k=_proj(attn.k_proj, lowrank),
        v=_proj(attn.v_proj, lowrank),
        o=_proj(attn.o_proj, lowrank),
        ln2=layer.post_attention_layernorm.weight.detach(),
        gate=_proj(mlp.gate_proj, lowrank),
        up=_proj(mlp.up_proj, lowrank),
        down=_proj(mlp.down_proj, lowrank),
        q_norm=q_norm.weight.detach() if q_norm is not None else None,
        k_norm=k_norm.weight.detach() if k_norm is not None else None,
    )


def rope_table(buffer: torch.Tensor, device: torch.device, previous: Optional[ModelWeights] = None) -> torch.Tensor:
    """The rotary inverse frequencies in float32 on `device`: the buffer itself when it already is, else a copy,
    reused from `previous` while the buffer is unchanged.

    `model.to(bfloat16)` makes the buffer bf16, so a float32 copy is needed; a fresh copy per call would be a new
    tensor each rollout, and a decode step captured over the last one would read freed memory (it collapsed
    GRPO on the GPU once the allocator handed that block to something else).
    """
    if buffer.dtype == torch.float32 and buffer.device == device:
        return buffer
    source = (buffer.data_ptr(), buffer._version)
    if previous is not None and previous.inv_freq_source == source:
        return previous.inv_freq
    return buffer.float().to(device)


def collect(model: Any, lowrank: bool, previous: Optional[ModelWeights] = None) -> ModelWeights:
    """Views of every weight of `model` (PEFT-wrapped or not) that the native forward reads.

    previous: the last call's result; tensors that must be converted (the rotary table) are reused from it
    while their source is unchanged, so every tensor keeps its address between calls.
    """
    lm = unwrap(model)
    cfg = lm.config
    inner = lm.model
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = inner.rotary_emb.inv_freq
    device = inner.embed_tokens.weight.device
    return ModelWeights(
        embed=inner.embed_tokens.weight.detach(),
        layers=[_layer(layer, lowrank) for layer in inner.layers],
        norm=inner.norm.weight.detach(),
        lm_head=_proj(lm.lm_head, lowrank),
        # Unsloth's rotary embedding keeps inv_freq on the CPU while the weights sit on the GPU
        inv_freq=rope_table(rope, device, previous),
        inv_freq_source=(rope.data_ptr(), rope._version),
        rope_scale=float(getattr(inner.rotary_emb, "attention_scaling", 1.0)),
        eps=float(cfg.rms_norm_eps),
        n_heads=cfg.num_attention_heads,
        n_kv_heads=cfg.num_key_value_heads,
        head_dim=head_dim,
    )


def merged_weight_bytes(model: Any) -> int:
    """Bytes of the base weights a merge rewrites (those under an active LoRA adapter): a device snapshot's size."""
    total = 0
    for module in unwrap(model).modules():
        if active_lora_terms(module):
            weight = module.base_layer.weight
            total += weight.numel() * weight.element_size()
    return total


class LoraMerge:
    """Merges active LoRA adapters into the base weights for one rollout and restores them exactly."""

    def __init__(self, on_device: bool = False) -> None:
        self._snapshots: dict = {}  # id(weight) -> (data_ptr, version after our restore, copy)
        self._on_device = on_device

    @property
    def on_device(self) -> bool:
        """Whether snapshots are kept beside the weights (their device) rather than in pinned host memory."""
        return self._on_device

    @on_device.setter
    def on_device(self, value: bool) -> None:
        if value != self._on_device:
            self.drop()
        self._on_device = value

    def drop(self) -> None:
        """Forget every snapshot (their memory goes); the next merge takes them again."""
        self._snapshots.clear()

    def device_bytes(self) -> int:
        """Bytes of snapshots held on a GPU."""
        return sum(c.numel() * c.element_size() for _, _, c in self._snapshots.values() if c.is_cuda)

    def _snapshot(self, weight: torch.Tensor) -> torch.Tensor:
        """The exact base weight (on the host, or beside it), retaken when anything but us wrote to `weight`."""
        key = id(weight)
        held = self._snapshots.get(key)
        if held is not None and held[0] == weight.data_ptr() and held[1] == weight._version:
            return held[2]
        if self._on_device:
            copy = torch.empty_like(weight, memory_format=torch.contiguous_format)
        else:
            copy = torch.empty(weight.shape, dtype=weight.dtype, pin_memory=weight.is_cuda)
        copy.copy_(weight.detach())
        self._snapshots[key] = (weight.data_ptr(), weight._version, copy)
        return copy

    @contextmanager
    def merged(self, model: Any):
        """Inside the block the base weights hold W + sum(B @ A * scale); outside they hold W, bit for bit."""
        touched = []
        try:
            with torch.no_grad():
                for module in unwrap(model).modules():
                    terms = active_lora_terms(module)
                    if not terms:
                        continue
                    weight = module.base_layer.weight
                    snap = self._snapshot(weight)
                    touched.append((weight, snap))
                    weight.copy_(merged_weight(module).to(weight.dtype))
            yield
        finally:
            with torch.no_grad():
                for weight, snap in touched:
                    weight.copy_(snap, non_blocking=True)
                    held = self._snapshots.get(id(weight))
                    if held is not None:  # still kept (a drop during the rollout lets it go)
                        self._snapshots[id(weight)] = (held[0], weight._version, held[2])
            if touched and touched[0][0].is_cuda:
                torch.cuda.synchronize()
