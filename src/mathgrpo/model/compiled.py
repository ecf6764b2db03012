"""Decoder layers compiled for training passes (`model.compile_layers`): one generated function a layer forward,
one backward, where the host's Python otherwise sets the pace.

On the GPU a training pass of the Qwen3-4B shape is bound by the host at the micro-batches a GRPO step uses: the
Python of transformers' layers, PEFT, the checkpointing and its selective cache launches the kernels more slowly
than the card runs them (docs/performance.md, "Packed passes"). Compiled, a layer's norms, rotary and SwiGLU become
a few fused kernels around its GEMMs and attention, and AOTAutograd's partitioner picks what forward saves for
backward: the products' outputs and some of what lies between them (the normalised inputs, q and k after their
norms and rotary, the SwiGLU product: about 1.5x what checkpointing with the products kept holds, counted by
`training.memory.ModelShape.compiled_saved`), without a dispatch hook on every op. So where the memory plan fits
that, compiled layers run without checkpointing (`training.sizing`); where it keeps only layer inputs,
checkpointing calls the compiled layer, once in forward and again in backward.

The compiled layers are switched in only inside `training_passes` (the trainers' forward and backward passes):
generation through the model's own forward (the hf rollout engine, evaluation) passes a KV cache whose state the
compiler would guard on at every token. Shapes are marked dynamic: a GRPO step's batches change width and size
every step, and one graph serves every layer of the model (same code, parameters passed as inputs), so a run
compiles a handful of times (forward with and without gradients, rows and packed), each the first time it meets it.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch

from .card import card_of


def decoder_layers(model: Any) -> list:
    """The decoder layers of a (PEFT-wrapped) causal LM: the modules of its body's `layers` list."""
    from .loading import unwrap

    layers = getattr(getattr(unwrap(model), "model", None), "layers", None)
    if layers is None:
        raise TypeError(f"{type(unwrap(model)).__name__} has no .model.layers; model.compile_layers needs them")
    return list(layers)


def compile_refusal(device: torch.device) -> Optional[str]:
    """Why decoder layers on `device` are not compiled for training (None: they are)."""
    if device.type != "cuda":
        return f"the model is on {device.type}, where compiling a layer costs more than it saves"
    card = card_of(device)
    if not card.kernels:
        return f"this card is {card.sm} and Triton kernels are used from sm_80 only (never tested below)"
    try:
        import triton  # noqa: F401  (torch.compile's GPU kernels are Triton's)
    except ImportError:
        return "Triton is not installed"
    return None


def compile_layers(model: Any) -> int:
    """Give every decoder layer a compiled forward (dynamic shapes; its backward follows), used inside
    `training_passes`; returns how many layers have one. Compiling happens at the first call."""
    layers = decoder_layers(model)
    # inductor (torch 2.11) says so of a softmax it splits (eager attention); nothing a user can act on
    warnings.filterwarnings("ignore", message=r"\s*Online softmax is disabled on the fly", category=UserWarning)
    for layer in layers:
        if getattr(layer, "_mathgrpo_compiled", None) is None:
            layer._mathgrpo_compiled = torch.compile(layer._call_impl, dynamic=True)
    return len(layers)


def _compiled_layers(model: Any) -> list:
    """The decoder layers that have a compiled forward (`compile_layers`); none for a model without them."""
    try:
        layers = decoder_layers(model)
    except TypeError:
        return []
    return [layer for layer in layers if getattr(layer, "_mathgrpo_compiled", None) is not None]


def compiled(model: Any) -> bool:
    """Whether the model's decoder layers have compiled forwards (`compile_layers`)."""
    return bool(_compiled_layers(model))


@contextmanager
def training_passes(model: Any) -> Iterator[bool]:
    """Within: the decoder layers run their compiled forwards (where `compile_layers` gave them one); after, and
    after an error, their own. Yields whether they are compiled."""
    layers = _compiled_layers(model)
    before = [layer._compiled_call_impl for layer in layers]
    for layer in layers:
        layer._compiled_call_impl = layer._mathgrpo_compiled  # what nn.Module.__call__ runs when set
    try:
        yield bool(layers)
    finally:
        for layer, own in zip(layers, before):
            layer._compiled_call_impl = own
