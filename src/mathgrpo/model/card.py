"""What the accelerator can do, read once: its compute capability decides the dtype, the rollout engine and
whether our Triton kernels run.

- bfloat16 runs natively from compute capability 8.0 (A100, L4, H100); a T4 (7.5) has no native bf16, so
  `model.dtype=auto` takes float16 there (trained with mixed precision: `model/precision.py`).
- The native rollout engine (Triton decode attention, torch.compile's generated kernels, CUDA graphs), the
  head log-prob kernel and Liger's kernels are used from 8.0 up. They were run and tested here on 9.0 (H100)
  only; below 8.0 nothing of ours was ever run, so `auto` keeps them off there instead of assuming they work.
- FP8 rollouts (`rollout.precision=fp8` / `fp8-kv`) need tensor cores that multiply float8: 8.9 and up (L4,
  L40, H100, H200). They are asked for, never chosen by `auto`: they change the numbers the sampler draws from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

BF16_CAPABILITY = (8, 0)  # native bfloat16 arithmetic
KERNEL_CAPABILITY = (8, 0)  # our Triton kernels and the native engine (tested on 9.0 only)
FP8_CAPABILITY = (8, 9)  # float8 GEMMs on the tensor cores (FP8 rollouts)
TESTED_CAPABILITIES = ((9, 0),)


@dataclass(frozen=True)
class Card:
    """One device as the choices see it: a CUDA card (name, compute capability, memory) or the CPU."""

    kind: str  # "cuda" or "cpu"
    name: str
    capability: Optional[tuple] = None  # (major, minor) of a CUDA card
    memory_gib: Optional[float] = None

    @property
    def sm(self) -> str:
        """`sm_90` for capability (9, 0); `cpu` for the CPU."""
        return f"sm_{self.capability[0]}{self.capability[1]}" if self.capability else "cpu"

    @property
    def native_bf16(self) -> bool:
        return self.kind == "cuda" and self.capability is not None and self.capability >= BF16_CAPABILITY

    @property
    def kernels(self) -> bool:
        """Whether our Triton kernels and the native engine run here (capability 8.0 and up)."""
        return self.kind == "cuda" and self.capability is not None and self.capability >= KERNEL_CAPABILITY

    @property
    def fp8(self) -> bool:
        """Whether the card multiplies float8 on its tensor cores (capability 8.9 and up: L4, L40, H100)."""
        return self.kind == "cuda" and self.capability is not None and self.capability >= FP8_CAPABILITY

    @property
    def tested(self) -> bool:
        """Whether this card's capability is one the GPU code was run and tested on."""
        return self.capability in TESTED_CAPABILITIES

    def describe(self) -> str:
        """`NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)`, or `cpu`."""
        if self.kind != "cuda":
            return "cpu"
        memory = f", {self.memory_gib:.1f} GiB" if self.memory_gib else ""
        return f"{self.name} ({self.sm}{memory})"


def card_of(device: torch.device) -> Card:
    """The Card of `device` (a CUDA device's properties are read from the driver)."""
    if device.type != "cuda":
        return Card("cpu", "cpu")
    if not torch.cuda.is_available():  # a GPU planned for on a machine without one (preflight's estimates)
        return Card("cuda", "a GPU not visible here")
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return Card("cuda", props.name, (props.major, props.minor), props.total_memory / 2**30)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def choose_dtype(setting: str, card: Card) -> tuple:
    """(dtype, why) for model.dtype=`setting` on `card`: auto is bf16 where the card has it natively, float16 on
    an older GPU, float32 on the CPU."""
    if setting != "auto":
        return DTYPES[setting], f"model.dtype={setting}"
    if card.kind != "cuda":
        return torch.float32, "auto: float32 on the CPU"
    if card.capability is None:
        return torch.bfloat16, "auto: bfloat16 on a GPU whose capability is not known here"
    if card.native_bf16:
        return torch.bfloat16, f"auto: {card.sm} has native bfloat16"
    return torch.float16, f"auto: {card.sm} has no native bfloat16, which needs sm_80"


def choose_engine(setting: str, card: Card, sharded: bool = False) -> tuple:
    """(engine name, why) for rollout.engine=`setting`: auto is the native engine where its kernels run (a GPU of
    capability 8.0+, weights not sharded), else transformers generate (`hf`)."""
    if setting != "auto":
        return setting, f"rollout.engine={setting}"
    if card.kind != "cuda":
        return "hf", "auto: the native engine is for GPUs"
    if sharded:
        return "hf", "auto: the weights are sharded (run.parallel=fsdp) and the native engine reads whole weights"
    if not card.kernels:
        return "hf", f"auto: the native engine's kernels need sm_80+ and this card is {card.sm}"
    untested = "" if card.tested else f"; its kernels were tested on sm_90 only, not on {card.sm}"
    return "native", f"auto: {card.sm} runs its kernels{untested}"


def fp8_problem(card: Card) -> Optional[str]:
    """None where `card` multiplies float8 (FP8 rollouts), else one line saying why not."""
    need = "FP8 needs an NVIDIA GPU of compute capability 8.9 or newer (L4, L40, H100)"
    if card.kind != "cuda":
        return f"{need}; this run is on the cpu"
    if card.capability is None:
        return f"{need}; the capability of {card.name} is not known"
    return None if card.fp8 else f"{need}; the {card.name} is {card.sm}"


def choose_precision(setting: str, card: Card) -> tuple:
    """(precision, why) of the weights a rollout reads for rollout.precision=`setting`: auto and bf16 are the model's
    dtype (`auto` never picks FP8); fp8 and fp8-kv are kept where `card` multiplies float8, else (None, why not)."""
    if not setting.startswith("fp8"):
        return "model dtype", f"rollout.precision={setting}"
    problem = fp8_problem(card)
    return (None, problem) if problem else (setting, f"rollout.precision={setting}; {card.sm} multiplies float8")
