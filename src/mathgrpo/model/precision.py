"""Mixed precision for float16 training; bfloat16 and float32 train as they are.

float16 has five exponent bits: AdamW's epsilon (1e-8) is zero in it, small gradients flush to zero and
large activations overflow, so float16 weights cannot be trained directly (a run of the default recipe in
plain float16 stopped with a NaN loss at its second warm-up step). With `model.dtype=float16` a stage
therefore trains as automatic mixed precision does:

- the weights it trains (LoRA adapters; every weight when it fine-tunes fully) are kept in float32, and
  the optimizer's state with them; frozen weights stay float16;
- forward passes run under `torch.autocast(float16)`: matrix products in float16, reductions in float32;
  log-softmax and the loss are computed in float32 by the log-prob and loss code itself;
- the loss is scaled up before backward so that small gradients survive float16, scaled back before
  clipping, and a step whose gradients overflowed is skipped with the scale halved (`torch.amp.GradScaler`,
  dynamic loss scaling; `train.optim.OptimizerStep` drives it).

bfloat16 has float32's exponent range, so its runs keep their plain bf16 passes (no autocast, no scaling).
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch


class Precision:
    """How a stage's passes run for the model's dtype on its device: autocast and loss scaling for float16 only."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device

    @property
    def mixed(self) -> bool:
        """True for float16: trainable weights in float32, passes under autocast, the loss scaled."""
        return self.dtype == torch.float16

    def keep_trainable_fp32(self, model: Any) -> int:
        """With mixed precision, cast every trainable weight of `model` to float32 (the optimizer then keeps its
        state in float32 too); returns how many tensors were cast. Call it before the optimizer is made."""
        if not self.mixed:
            return 0
        cast = 0
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
                cast += 1
        return cast

    def autocast(self) -> ContextManager:
        """The context a training forward pass runs in: float16 autocast with mixed precision, else nothing."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.float16)

    def scaler(self) -> torch.amp.GradScaler:
        """A dynamic loss scaler, enabled with mixed precision only (a disabled one passes everything through)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.mixed)

    def describe(self) -> str:
        """How a stage trains in this dtype, for the dry run and the start of a run."""
        if self.mixed:
            return "mixed precision: trainable weights and AdamW state in float32, float16 autocast, dynamic loss scaling"
        return "trained as it is: no autocast, no loss scaling"
