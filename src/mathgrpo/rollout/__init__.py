"""Rollout engines behind one interface: `hf` (transformers generate) and `native` (static cache, graphs)."""

from __future__ import annotations

from typing import Any

from .base import Generation, RolloutEngine, SamplingParams, sequence_seed
from .engines import ENGINES

__all__ = ["ENGINES", "Generation", "RolloutEngine", "SamplingParams", "make_engine", "sequence_seed"]


def make_engine(name: str, model: Any, tokenizer: Any, stop_ids: list, batch_size: int = 0, lora: str = "merge") -> RolloutEngine:
    """The engine `name` (auto: native on GPU where the model is supported, else hf); `lora`: how the native
    engine applies LoRA adapters (merge or lowrank)."""
    from .hf import HFEngine

    from .. import dist

    device = next(model.parameters()).device
    if name == "auto":
        name = "native" if device.type == "cuda" and not dist.is_sharded(model) else "hf"
    if name == "native" and dist.is_sharded(model):
        print("rollout: the native engine reads whole weights and this model is sharded (run.parallel=fsdp); using hf")
        name = "hf"
    if name == "native":
        from .native import NativeEngine, supports

        reason = supports(model)
        if reason:
            print(f"rollout: native engine does not support this model ({reason}); using hf (transformers generate)")
            return HFEngine(model, tokenizer, stop_ids, batch_size)
        return NativeEngine(model, tokenizer, stop_ids, batch_size, lora=lora)
    if name == "hf":
        return HFEngine(model, tokenizer, stop_ids, batch_size)
    raise ValueError(f"unknown rollout.engine {name!r}; use one of {', '.join(ENGINES)}")
