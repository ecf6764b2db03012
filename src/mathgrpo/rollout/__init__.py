"""Rollout engines behind one interface: `hf` (transformers generate) and `native` (static cache, graphs)."""

from __future__ import annotations

from typing import Any

from .base import Generation, RolloutEngine, SamplingParams, sequence_seed
from .engines import ENGINES

__all__ = ["ENGINES", "Generation", "RolloutEngine", "SamplingParams", "make_engine", "sequence_seed"]


def make_engine(name: str, model: Any, tokenizer: Any, stop_ids: list, batch_size: int = 0, lora: str = "merge") -> RolloutEngine:
    """The engine `name` (auto: native on a GPU whose capability runs its kernels and a model it supports, else
    hf; `model.card.choose_engine`); `lora`: how the native engine applies LoRA adapters (merge or lowrank)."""
    from .hf import HFEngine

    from .. import dist
    from ..model.card import card_of, choose_engine

    device = next(model.parameters()).device
    card = card_of(device)
    if name == "auto":
        name, why = choose_engine(name, card, dist.is_sharded(model))
        if device.type == "cuda" and name == "hf":
            print(f"rollout: {why}")
    if name == "native" and device.type == "cuda" and not card.kernels:
        print(f"rollout: the native engine's kernels need sm_80+ and this card is {card.sm}; using hf")
        name = "hf"
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
