"""AdamW over the trainable parameters, a warm-up + decay learning-rate schedule, and the optimizer step both
training stages take (gradients summed over ranks, loss scaling for float16, clipping, overflow skips)."""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import dist


def make_optimizer(model: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the parameters that require gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("the model has no trainable parameters: is LoRA on, or full_finetune set?")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then constant, linear or cosine decay to 0 at `total`."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - progress if kind == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# Steps skipped in a row for overflowing gradients before the run stops: from the initial scale of 2**16 that
# is a scale of 2**-8, where a finite loss with overflowing gradients is no longer a matter of scale.
MAX_SKIPPED_IN_A_ROW = 24


class OptimizerStep:
    """Backward with the loss scaled (float16 mixed precision; a plain backward otherwise), then gradients summed
    over ranks, unscaled, clipped, and the optimizer and scheduler stepped, or the step skipped when float16
    gradients overflowed (the scale is halved and the weights stay as they were)."""

    def __init__(self, opt: torch.optim.Optimizer, sched: Any, max_grad_norm: float, scaler: torch.amp.GradScaler) -> None:
        self.opt, self.sched, self.max_grad_norm, self.scaler = opt, sched, max_grad_norm, scaler
        self.skipped = 0  # steps skipped so far
        self._in_a_row = 0

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate `loss`, scaled when loss scaling is on."""
        self.scaler.scale(loss).backward()

    def step(self, trainable: list, loss: float) -> tuple:
        """(gradient norm, whether the optimizer stepped) after the micro-batches' backward passes.

        Raises FloatingPointError on a non-finite loss, on non-finite gradients without loss scaling, and when
        loss scaling has skipped MAX_SKIPPED_IN_A_ROW steps in a row.
        """
        dist.sum_gradients(trainable)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss {loss}")
        self.scaler.unscale_(self.opt)
        norm = dist.full_value(torch.nn.utils.clip_grad_norm_(trainable, self.max_grad_norm))
        if math.isfinite(norm):
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
            self._in_a_row = 0
            return norm, True
        if not self.scaler.is_enabled():
            raise FloatingPointError(f"loss {loss} / grad norm {norm}")
        self.scaler.update()  # halves the scale; the optimizer did not step
        self.skipped += 1
        self._in_a_row += 1
        if self._in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise FloatingPointError(f"float16 gradients overflowed {self._in_a_row} steps in a row (loss scale now "
                                     f"{self.scaler.get_scale():g}); try model.dtype=float32 or a lower learning rate")
        return norm, False

    def metrics(self) -> dict:
        """The loss scale and skipped steps (loss scaling only; empty otherwise)."""
        if not self.scaler.is_enabled():
            return {}
        return {"loss_scale": self.scaler.get_scale(), "skipped_steps": self.skipped}

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the scaling (its scale and growth tracker; the skip count)."""
        return {"scaler": self.scaler.state_dict(), "skipped": self.skipped, "in_a_row": self._in_a_row}

    def load_state_dict(self, state: dict) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped, self._in_a_row = state.get("skipped", 0), state.get("in_a_row", 0)
