"""What the warm-up and GRPO share: a stage's folder, checkpoints and resume, the loop with its metrics
writer and progress bar, clean stops on Ctrl-C, NaN and out-of-memory.

A stage subclasses `Stage` and says only what is its own: how to take one step (`step_row`), what its
checkpoint keeps besides the weights, optimizer, scheduler and RNGs (`extra` / `restore`), what to do
before the first step and what its progress line shows. Every stage then resumes, checkpoints, logs
and stops the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from . import checkpoint
from .. import dist
from ..config import Config
from ..model.common import resolve_dtype
from ..model.precision import Precision
from .logprobs import model_parts
from .optim import OptimizerStep, make_optimizer, make_scheduler
from ..progress import StepProgress, notice
from ..runs import latest_checkpoint
from ..tracking import MetricsWriter, truncate_after
from .stopping import StopRequest, TrainingStopped


def place(model: Any, parallel: str) -> torch.device:
    """Shard `model`'s decoder across ranks when run.parallel=`parallel` is fsdp under torchrun; the device its
    weights live on."""
    if dist.world().active and parallel == "fsdp":
        dist.shard(model_parts(model)[0])
    return next(model.parameters()).device


class Stage:
    """One training stage of a run folder (`<run>/<name>`): subclasses set the model, tokenizer, optimizer,
    scheduler and `steps`, and implement `step_row`."""

    name = "stage"  # its folder and the word that starts its messages
    label = "stage"  # the progress bar's and Ctrl-C message's name for it
    logs = ("metrics.jsonl",)  # files whose rows after the resumed step are dropped on resume
    nan_advice = "lower the learning rate"
    oom_advice = "lower the micro-batch size"

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        self.cfg, self.dir = cfg, Path(run_dir) / self.name
        self.step = 0
        self.model: Any = None
        self.tok: Any = None
        self.opt: Any = None
        self.sched: Any = None
        self.stepper: Optional[OptimizerStep] = None  # set by `train_with`
        self.precision: Optional[Precision] = None

    def prepare(self, model: Any) -> torch.device:
        """Take `model` as the stage's: its trainable weights in float32 under float16 mixed precision, then
        sharded across ranks with run.parallel=fsdp; the device its weights live on."""
        device = next(model.parameters()).device
        self.precision = Precision(resolve_dtype(self.cfg.model.dtype, device), device)
        self.precision.keep_trainable_fp32(model)
        self.model = model
        return place(model, self.cfg.run.parallel)

    def train_with(self, lr: float, weight_decay: float, schedule: str, warmup: int, total: int, max_grad_norm: float) -> None:
        """The optimizer (AdamW), its schedule and the step that drives both with the precision's loss scaling."""
        self.opt = make_optimizer(self.model, lr, weight_decay)
        self.sched = make_scheduler(self.opt, schedule, warmup, total)
        self.stepper = OptimizerStep(self.opt, self.sched, max_grad_norm, self.precision.scaler())

    # ---- what a stage says about itself ------------------------------------------------------

    @property
    def steps(self) -> int:
        """The step the stage ends at."""
        raise NotImplementedError

    def step_row(self) -> tuple:
        """Take one step; (the row to log for it, True when the stage is done early)."""
        raise NotImplementedError

    def extra(self) -> dict:
        """What a checkpoint keeps besides weights, optimizer, scheduler and RNG states."""
        return {}

    def restore(self, extra: dict) -> None:
        """Take back what `extra` saved."""

    def before_loop(self, writer: Optional[MetricsWriter]) -> None:
        """Work before the first step (a held-out evaluation, say); rows go to `writer` (None off rank 0)."""

    def status(self, row: dict) -> str:
        """The progress line after a step."""
        return ""

    def state_before_step(self) -> Optional[Path]:
        """Checkpoint the state the failed step started from; None when that cannot be done exactly."""
        return None

    # ---- the shared lifecycle -----------------------------------------------------------------

    def resume(self) -> bool:
        """Continue from the stage's newest checkpoint; False when there is none."""
        ckpt = latest_checkpoint(self.dir / "checkpoints")
        if ckpt is None:
            self._truncate_logs(-1)  # rows of a run killed before its first checkpoint
            return False
        extra = checkpoint.load(ckpt, self.model, self.opt, self.sched)
        self.step = extra["step"]
        if self.stepper:
            self.stepper.load_state_dict(extra.get("optimizer_step", {}))
        self.restore(extra)
        self._truncate_logs(self.step)
        notice(f"{self.name}: resumed from {ckpt} (step {self.step})")
        return True

    def _truncate_logs(self, step: int) -> None:
        """Drop logged rows after `step` (the resumed run logs them again); rank 0 writes."""
        for name in self.logs:
            if (self.dir / name).exists() and dist.world().main:
                truncate_after(self.dir / name, step)

    def save_checkpoint(self) -> Path:
        """Checkpoint the current step; rank 0 writes."""
        extra = {**self.extra(), "optimizer_step": self.stepper.state_dict() if self.stepper else {}}
        return checkpoint.save(self.dir / "checkpoints", self.step, self.model, self.tok, self.opt, self.sched,
                               extra, self.cfg.run.keep_last)

    def loop(self) -> None:
        """Steps until `steps` (or a stage's early end): a metrics row and progress after each, a checkpoint
        every run.checkpoint_every steps and at the last, a saved stop on Ctrl-C."""
        self.dir.mkdir(parents=True, exist_ok=True)
        main = dist.world().main
        writer = MetricsWriter(self.dir, self.cfg.run.report_to, self.name) if main else None
        progress = None
        try:
            self.before_loop(writer)  # before the bar: its clock counts steps only
            progress = StepProgress(self.label, self.steps, self.step, enabled=self.cfg.run.progress and main)
            with StopRequest(self.label) as stop:
                while self.step < self.steps:
                    row, done = self.guarded_step()
                    if writer:
                        writer.log(self.step, row)
                    if done:
                        progress.finish(self.step, self.status(row))
                        break
                    progress.update(self.step, self.status(row))
                    if self.step % self.cfg.run.checkpoint_every == 0 or self.step == self.steps:
                        self.save_checkpoint()
                    if stop.agreed():
                        path = self.save_checkpoint()
                        progress.close()  # the bar's last frame first: closed later, it would follow the message
                        notice(f"{self.name}: interrupted; saved {path}. Continue with --resume {self.dir.parent}")
                        raise KeyboardInterrupt
        finally:
            if progress:
                progress.close()
            if writer:
                writer.close()

    def guarded_step(self) -> tuple:
        """`step_row`, with NaN and out-of-memory turned into a stop that saves what it can and says what to change."""
        try:
            return self.step_row()
        except FloatingPointError as err:
            path = self.state_before_step()  # every rank sees the same (all-reduced) value: all save or none
            raise TrainingStopped(f"{self.name} step {self.step + 1}: non-finite {err}. {self._saved(path)}. "
                                  f"{self.nan_advice}; then --resume {self.dir.parent}.") from None
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            # One rank runs out alone; the others cannot join a collective save, so save only alone.
            path = None if dist.world().active else self.state_before_step()
            raise TrainingStopped(f"{self.name} step {self.step + 1}: out of GPU memory. {self._saved(path)}. "
                                  f"{self.oom_advice}; then --resume {self.dir.parent}.") from None

    @staticmethod
    def _saved(path: Optional[Path]) -> str:
        return f"Saved the state before this step to {path}" if path else "Resume from the last checkpoint"
