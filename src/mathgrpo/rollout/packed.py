"""The engine's own copies of the decoder's projections: LoRA merged in, q|k|v and gate|up packed, bf16 or FP8.

Read in place, the model's tensors cost one GEMM per projection (k and v, with few outputs, run on small
tiles) and, with LoRA, a merge into the model's weights that must be undone after every rollout. A `Packer`
writes, for every layer, W + B A s of q, k and v into one matrix, of gate and up into another, and of o and
down into their own: in the model's dtype (the numbers the in-place merge gives, rounded once) or in FP8 with
one scale per output row (fp8.py). The model's weights are never written. With rollout.skinny_gemm the copies in
the model's dtype multiply through the skinny-GEMM kernel (skinny_gemm.py) at decode's small row counts (sm_90+).

The buffers are allocated once and refilled in place, because captured decode graphs read them by address;
a refill happens only when a source tensor changed since the last one (an optimizer step bumps the version
of every adapter it updates). The copies cost memory: the projections' bytes in bf16 (what device snapshots
of a merged base take), half of that in FP8.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional, Union

import torch

from ..model.loading import unwrap
from . import fp8, skinny_gemm
from .weights import ModelWeights, Proj, _is_lora, active_lora_terms, merged_weight

# (packed name, the modules it stacks by rows, their parent in a decoder layer)
PACKS = (
    ("qkv", ("q_proj", "k_proj", "v_proj"), "self_attn"),
    ("o", ("o_proj",), "self_attn"),
    ("gate_up", ("gate_proj", "up_proj"), "mlp"),
    ("down", ("down_proj",), "mlp"),
)
UNPACKED = {"q": None, "k": None, "v": None, "gate": None, "up": None}  # what a packed layer no longer reads


def _base(module: Any) -> Any:
    return module.base_layer if _is_lora(module) else module


def sources(model: Any) -> list:
    """For every decoder layer, {packed name: [the linear modules it stacks]}."""
    out = []
    for layer in unwrap(model).model.layers:
        out.append({name: [getattr(getattr(layer, parent), m) for m in members] for name, members, parent in PACKS})
    return out


def packed_bytes(model: Any, fp8_weights: bool) -> int:
    """Bytes the packed copies of `model`'s projections take (FP8: a byte a weight plus a float32 scale a row)."""
    total = 0
    for layer in sources(model):
        for modules in layer.values():
            for module in modules:
                base = _base(module)
                rows, _ = base.weight.shape
                size = base.weight.element_size()
                total += base.weight.numel() * (1 if fp8_weights else size) + (4 * rows if fp8_weights else 0)
                total += base.bias.numel() * base.bias.element_size() if base.bias is not None else 0
    return total


def _signature(layers: list) -> tuple:
    """(address, version) of every tensor the packed copies are computed from, and the adapters' scales."""
    sig = []
    for layer in layers:
        for modules in layer.values():
            for module in modules:
                base = _base(module)
                sig += [(t.data_ptr(), t._version) for t in (base.weight, base.bias) if t is not None]
                sig += [(a.data_ptr(), a._version, b.data_ptr(), b._version, s) for a, b, s in active_lora_terms(module)]
    return tuple(sig)


def fp8_ways(gemm: Union[None, str, dict], default: str = fp8.DEFAULT_WAY) -> Optional[dict]:
    """{packed name: FP8 GEMM way} from one way for all (a str) or a mapping (names left out: `default`);
    None stays None (copies in the model's dtype)."""
    if gemm is None:
        return None
    ways = {name: gemm for name, _, _ in PACKS} if isinstance(gemm, str) else {name: default for name, _, _ in PACKS}
    if isinstance(gemm, dict):
        unknown = set(gemm) - set(ways)
        if unknown:
            raise ValueError(f"fp8 gemm names {sorted(unknown)}; use {', '.join(ways)}")
        ways.update(gemm)
    bad = {way for way in ways.values() if way not in fp8.GEMMS}
    if bad:
        raise ValueError(f"fp8 gemm={sorted(bad)}; use one of {', '.join(fp8.GEMMS)}")
    return ways


class Packer:
    """Packed, merged copies of the projections (module docstring), in the model's dtype or FP8 (`gemm` set: one
    way for every projection, or a {packed name: way} mapping, as fp8_ways reads it); `skinny`: copies in the
    model's dtype go through the skinny-GEMM kernel where it serves them."""

    def __init__(self, gemm: Union[None, str, dict] = None, skinny: bool = False) -> None:
        self.ways = fp8_ways(gemm)  # None: copies in the model's dtype
        self.skinny = skinny  # copies in the model's dtype through skinny_gemm where it serves them (rollout.skinny_gemm)
        self._packs: Optional[list] = None  # per layer {name: Proj over the buffers}
        self._signature: Optional[tuple] = None

    @property
    def fp8(self) -> bool:
        return self.ways is not None

    def nbytes(self) -> int:
        """Bytes of the buffers now held."""
        if self._packs is None:
            return 0
        tensors = [t for layer in self._packs for p in layer.values() for t in (p.weight, p.bias, p.scale) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def drop(self) -> None:
        """Free the buffers; the next `pack` allocates and fills them again (at new addresses)."""
        self._packs = self._signature = None

    def pack(self, model: Any, w: ModelWeights) -> ModelWeights:
        """`w` with every layer's projections replaced by the packed copies, refilled first if their sources changed."""
        layers = sources(model)
        if self._packs is None:
            self._packs = [self._allocate(layer) for layer in layers]
        signature = _signature(layers)
        if signature != self._signature:
            with torch.no_grad():
                for layer, packs in zip(layers, self._packs):
                    for name, modules in layer.items():
                        self._fill(packs[name], modules)
            self._signature = signature
        return replace(w, layers=[replace(lw, **UNPACKED, **packs) for lw, packs in zip(w.layers, self._packs)])

    def _allocate(self, layer: dict) -> dict:
        """Empty buffers for one layer's packs."""
        packs = {}
        for name, modules in layer.items():
            weights = [_base(m).weight for m in modules]
            rows, cols = sum(t.shape[0] for t in weights), weights[0].shape[1]
            device, dtype = weights[0].device, weights[0].dtype
            way = self.ways[name] if self.fp8 else "triton" if self.skinny and skinny_gemm.serves(device, dtype) else ""
            if self.fp8 and way != "emulate" and (rows % 16 or cols % 16):
                raise ValueError(f"rollout.precision=fp8: the {name} projection is {rows} x {cols}; FP8 GEMMs need multiples of 16")
            weight = torch.empty(rows, cols, device=device, dtype=fp8.E4M3 if self.fp8 else dtype)
            scale = torch.empty(1, rows, device=device, dtype=torch.float32) if self.fp8 else None
            has_bias = any(_base(m).bias is not None for m in modules)
            bias = torch.zeros(rows, device=device, dtype=dtype) if has_bias else None
            unit = torch.ones((), device=device, dtype=torch.float32) if way in ("unit", "triton") and self.fp8 else None
            packs[name] = Proj(weight, bias, scale=scale, gemm=way, unit=unit)
        return packs

    def _fill(self, proj: Proj, modules: list) -> None:
        """Write each module's merged weight (and bias) into its rows of `proj`."""
        start = 0
        for module in modules:
            merged = merged_weight(module)
            rows = slice(start, start + merged.shape[0])
            if self.fp8:
                fp8.quantize_rows(merged, proj.weight[rows], proj.scale[0, rows])
            else:
                proj.weight[rows].copy_(merged)
            bias = _base(module).bias
            if bias is not None:
                proj.bias[rows].copy_(bias.detach())
            start = rows.stop
