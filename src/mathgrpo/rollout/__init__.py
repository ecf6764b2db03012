"""Rollout engines behind one interface: `hf` (transformers generate) and `native` (static cache, graphs).

An engine is configured when it is built: `choose_engine` says which one a model gets and what a memory plan
must know of it (whether it caches a prompt once per group, the bytes of the weight copies it could keep), so
that a trainer sizes its batch and snapshots first and hands them to `make_engine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

from ..config import CHOICES
from ..progress import notice
from .base import Generation, RolloutEngine, SamplingParams, sequence_seed
from .fp8 import PrecisionRefused, precision_problem

__all__ = ["EngineChoice", "Generation", "PrecisionRefused", "RolloutEngine", "SamplingParams", "choose_engine",
           "make_engine", "precision_refusal", "sequence_seed"]


@dataclass(frozen=True)
class EngineChoice:
    """The engine a model gets, and what a memory plan must know of it before it is built."""

    name: str  # hf or native
    lora: str = "merge"  # how the native engine applies LoRA adapters: merge or lowrank
    shares_prompt_cache: bool = False  # a prompt's keys and values are cached once for its n samples
    snapshot_bytes: int = 0  # device bytes of the weight copies it keeps when the memory plan grants them
    precision: str = "auto"  # rollout.precision of the native engine: auto / bf16 (the model's dtype), fp8 or fp8-kv
    copy_bytes: int = 0  # device bytes of the weight copies it makes whatever the plan (FP8 projections)


def choose_engine(name: str, model: Any, lora: str = "merge", precision: str = "auto") -> EngineChoice:
    """The engine rollout.engine=`name` gives `model` (auto: native on a GPU whose capability runs its kernels, else
    hf; `model.card.choose_engine`); a native engine that cannot run here falls back to hf with a notice saying why.
    `lora`: how the native engine applies LoRA adapters (merge or lowrank); `precision`: auto / bf16 (the model's
    dtype), fp8 or fp8-kv (native engine on a GPU of compute capability 8.9+; elsewhere `fp8.PrecisionRefused` with the
    reason)."""
    from .. import dist
    from ..model.card import card_of, choose_engine as card_choice

    if name not in CHOICES["rollout.engine"]:
        raise ValueError(f"unknown rollout.engine {name!r}; use one of {', '.join(CHOICES['rollout.engine'])}")
    device = next(model.parameters()).device
    card = card_of(device)
    if name == "auto":
        name, why = card_choice(name, card, dist.is_sharded(model))
        if device.type == "cuda" and name == "hf":
            notice(f"rollout: {why}")
    if name == "native" and device.type == "cuda" and not card.kernels:
        notice(f"rollout: the native engine's kernels need sm_80+ and this card is {card.sm}; using hf")
        name = "hf"
    if name == "native" and dist.is_sharded(model):
        notice("rollout: the native engine reads whole weights and this model is sharded (run.parallel=fsdp); using hf")
        name = "hf"
    if name == "hf":
        if precision.startswith("fp8"):
            why = "this model is sharded" if dist.is_sharded(model) else f"rollout.engine is hf here (a {device.type} run)"
            raise PrecisionRefused(f"rollout.precision={precision}: FP8 rollouts need the native engine on a GPU; {why}")
        return EngineChoice("hf")
    from .native import resolve_attention, snapshot_bytes, supports, weight_copy_bytes

    reason = supports(model)
    if reason and precision.startswith("fp8"):
        raise PrecisionRefused(f"rollout.precision={precision}: FP8 rollouts need the native engine, which cannot run this "
                               f"model: {reason}")
    if reason:
        notice(f"rollout: native engine does not support this model ({reason}); using hf (transformers generate)")
        return EngineChoice("hf")
    problem = precision_refusal(precision, name, lora, card, device)
    if problem:  # refused here, before a memory plan is made for an engine that cannot be built
        raise PrecisionRefused(f"rollout.precision={precision}: {problem}")
    return EngineChoice("native", lora, resolve_attention("auto", device) == "triton",
                        snapshot_bytes(model, lora, precision), precision, weight_copy_bytes(model, precision))


def precision_refusal(precision: str, engine: str, lora: str, card: Any, device: Any) -> Optional[str]:
    """Why rollout.precision cannot run with `engine` on `device` (`fp8.precision_problem`, told whether the Triton
    attention kernel runs there), or None: what choose_engine refuses, and preflight says before a model loads."""
    from .native import resolve_attention

    return precision_problem(precision, engine, lora, card, triton=resolve_attention("auto", device) == "triton")


def make_engine(engine: Union[str, EngineChoice], model: Any, tokenizer: Any, stop_ids: list, batch_size: int = 0,
                lora: str = "merge", snapshots_on_device: bool = False, hf_cache: str = "auto",
                precision: str = "auto", skinny_gemm: bool = True) -> RolloutEngine:
    """The engine a rollout.engine value names (chosen by `choose_engine` with `lora` and `precision`), or the one
    an `EngineChoice` made, built for its whole life: `batch_size` sequences per generate call (0: all), whether the
    native engine keeps its copies of the LoRA-merged weights on the GPU (`snapshots_on_device`) and multiplies
    them by the skinny-GEMM kernel (`skinny_gemm`, rollout.skinny_gemm), and the hf engine's key/value cache
    (`hf_cache`: dynamic, static, or auto: static on a GPU)."""
    choice = engine if isinstance(engine, EngineChoice) else choose_engine(engine, model, lora, precision)
    if choice.name == "native":
        from .native import NativeEngine

        return NativeEngine(model, tokenizer, stop_ids, batch_size, lora=choice.lora, snapshots_on_device=snapshots_on_device,
                            precision=choice.precision, skinny_gemm=skinny_gemm)
    from .hf import HFEngine

    return HFEngine(model, tokenizer, stop_ids, batch_size, static_cache=static_cache(hf_cache, next(model.parameters()).device.type))


def static_cache(hf_cache: str, device_type: str) -> bool:
    """Whether the hf engine allocates its cache once at full length: `auto` does on a GPU (2.3-2.5x faster decode
    steps at the Qwen3-4B shape; the default recipe learned the same) and not on the CPU (slower there:
    docs/performance.md)."""
    if hf_cache == "auto":
        return device_type == "cuda"
    return hf_cache == "static"
