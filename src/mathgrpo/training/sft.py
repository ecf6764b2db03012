"""Format warm-up: cross-entropy on worked solutions in the reasoning format, loss on the answer side only.

The model sees the prompt as GRPO will render it and learns to write `fmt.solution(...)` then the
end-of-sequence token. With `sft.stop_at_accuracy` it stops as soon as greedy held-out accuracy
reaches that fraction, so GRPO starts from a model that follows the format but still has room to
improve. Resume, checkpoints and stops are the shared `stage.Stage` lifecycle.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .. import dist
from ..config import Config
from ..data import DataError
from ..data.formats import Format, get_format, render_prompt
from ..evaluation.heldout import heldout_accuracy
from ..model.compiled import training_passes
from ..model.loading import load_base, make_trainable, publish_model, stop_token_ids, training_attention
from ..progress import notice
from ..rollout import make_engine
from .fitting import fitting_problems
from .stage import Stage


@dataclass
class Example:
    """One tokenized warm-up example."""

    ids: list  # prompt + target token ids
    prompt_len: int  # tokens that carry no loss


def make_examples(problems: list, fmt: Format, tokenizer: Any, template: str, max_len: int) -> list:
    """Tokenized (prompt, worked solution + eos) pairs; problems without a solution are skipped."""
    from ..data.solutions import sft_text

    examples = []
    for p in problems:
        target = sft_text(p, fmt)
        if target is None:
            continue
        prompt_ids = tokenizer(render_prompt(p.question, fmt, tokenizer, template), add_special_tokens=False)["input_ids"]
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt_ids + target_ids)[:max_len]
        if len(ids) > len(prompt_ids):
            examples.append(Example(ids, len(prompt_ids)))
    return examples


def no_examples_reason(problems: list, fmt: Format, cfg: Config) -> str:
    """Why `make_examples` gave nothing, and what to change: no worked solutions, or prompts that fill
    model.max_seq_length."""
    from ..data.solutions import sft_text

    source = cfg.sft.source or cfg.data.source
    solved = sum(sft_text(p, fmt) is not None for p in problems)
    if not solved:
        return (f"no warm-up examples: none of the {len(problems)} problems of {source} has a worked solution; "
                "set sft.source to a source with solutions, or sft.enabled=false")
    return (f"no warm-up examples: the prompts of all {solved} problems of {source} with a worked solution take "
            f"model.max_seq_length={cfg.model.max_seq_length} tokens or more; raise model.max_seq_length (if the "
            "model allows) or use shorter problems")


def collate(examples: list, pad_id: int, device: torch.device) -> tuple:
    """(input_ids, labels) right-padded to the longest example; labels are -100 on prompt and padding.

    No attention mask: with the padding on the right, causal attention never lets a real token see a
    pad, so the model runs unmasked (any mask with zeros sends attention to its slower masked path:
    15-19% of a GRPO forward + backward on the H100).
    """
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(examples):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        labels[i, e.prompt_len : len(e.ids)] = ids[i, e.prompt_len : len(e.ids)]
    return ids.to(device), labels.to(device)


def target_tokens(batch: list) -> int:
    """Answer-side tokens in `batch` (the ones the loss counts, the end-of-sequence token included)."""
    return sum(len(e.ids) - e.prompt_len for e in batch)


def sft_loss(model: Any, batch: list, pad_id: int, device: torch.device, total_tokens: float) -> torch.Tensor:
    """Summed cross-entropy over the answer-side tokens of `batch`, divided by the step's total count.

    Dividing by the whole step's token count (not the micro-batch's) makes micro-batches and ranks
    add up to exactly the loss of one big batch.
    """
    ids, labels = collate(batch, pad_id, device)
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()  # a cache here is never read
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss / max(total_tokens, 1.0)


def prepare_model(cfg: Config) -> tuple:
    """The model to warm up: the base, with LoRA unless sft.full_finetune."""
    model, tok = load_base(cfg.model, seed=cfg.run.seed)
    return make_trainable(model, cfg, not cfg.sft.full_finetune), tok


def ending_note(step: int, steps: int, dev: Optional[dict], target: Optional[float]) -> Optional[str]:
    """What to say when the warm-up ends: stopped early at its target, or far below it (GRPO then has little to go on)."""
    if target is None or not dev:
        return None
    acc = dev["accuracy"]
    if acc >= target:
        return f"warm-up: stopped at step {step} of {steps}: {acc:.0%} dev accuracy >= {target:.0%} target (sft.stop_at_accuracy)"
    if acc < target / 2:
        return (f"warning: the warm-up ended at {acc:.0%} dev accuracy, far below its {target:.0%} target; GRPO learns "
                f"little from a model that rarely answers right (raise sft.steps or sft.lr, and check the warm-up data)")
    return None


class SFTRun(Stage):
    """The warm-up stage of a run folder: setup, steps, checkpoints, final model in `sft/model`."""

    name, label = "sft", "warm-up"
    nan_advice = "Lower sft.lr"
    oom_advice = "Lower sft.micro_batch_size or model.max_seq_length"

    def __init__(self, cfg: Config, run_dir: Path, train: list, dev: list) -> None:
        super().__init__(cfg, run_dir)
        self.fmt = get_format(cfg.format.preset, cfg.format.system_prompt, cfg.format.instruction)
        model, self.tok = prepare_model(cfg)
        self.device = self.prepare(model)
        self.examples = make_examples(train, self.fmt, self.tok, cfg.format.template, cfg.model.max_seq_length)
        if not self.examples:
            raise DataError(no_examples_reason(train, self.fmt, cfg))
        self.dev = fitting_problems(dev, "warm-up dev", cfg, self.model, self.tok, self.fmt)
        self.train_with(cfg.sft.lr, cfg.sft.weight_decay, "constant", cfg.sft.warmup_steps, cfg.sft.steps, cfg.sft.max_grad_norm)
        self.rng = random.Random(cfg.run.seed)
        self.last_dev: Optional[dict] = None

    # ---- the stage's own part of the lifecycle ---------------------------------------------

    @property
    def steps(self) -> int:
        return self.cfg.sft.steps

    def extra(self) -> dict:
        return {"data_rng": self.rng.getstate(), "last_dev": self.last_dev}

    def restore(self, extra: dict) -> None:
        self.rng.setstate(extra["data_rng"])
        self.last_dev = extra.get("last_dev")

    def status(self, row: dict) -> str:
        return f"loss {row['loss']:.3f}" + (f" dev {self.last_dev['accuracy']:.2f}" if self.last_dev else "")

    def step_row(self) -> tuple:
        """One step's loss and time, with dev accuracy when checked; done when it reached sft.stop_at_accuracy."""
        t0 = time.time()
        loss = self.train_step()
        stop = self._should_stop()
        row = {"loss": loss, "lr": self.sched.get_last_lr()[0], "step_time": time.time() - t0, **self.stepper.metrics()}
        if self.last_dev and self.step % self.cfg.sft.eval_every == 0:
            row["dev_accuracy"] = self.last_dev["accuracy"]
        return row, stop

    # ---- one step --------------------------------------------------------------------------

    def _batch(self) -> list:
        return [self.examples[self.rng.randrange(len(self.examples))] for _ in range(self.cfg.sft.batch_size)]

    def train_step(self) -> float:
        """One optimizer step over sft.batch_size examples (this rank's share, in micro-batches); returns the loss."""
        whole = self._batch()
        total_tokens = target_tokens(whole)
        _, batch = dist.share(whole)
        micro = self.cfg.sft.micro_batch_size or len(batch)
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        with training_attention(self.cfg.model, self.device), training_passes(self.model):
            for i in range(0, len(batch), micro):
                with self.precision.autocast():
                    loss = sft_loss(self.model, batch[i : i + micro], self.tok.pad_token_id, self.device, total_tokens)
                self.stepper.backward(loss)
                total += loss.item()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        total = dist.all_sum(total)
        self.stepper.step(trainable, total)
        self.step += 1
        return total

    def dev_accuracy(self) -> dict:
        """Greedy accuracy on the dev set with the current weights."""
        engine = make_engine("hf", self.model, self.tok, stop_token_ids(self.tok))
        return heldout_accuracy(engine, self.dev, self.fmt, self.cfg.format.template, self.cfg.rollout.max_new_tokens)

    def _should_stop(self) -> bool:
        """Held-out check every sft.eval_every steps when a stop accuracy is set."""
        target = self.cfg.sft.stop_at_accuracy
        if target is None or self.step % self.cfg.sft.eval_every:
            return False
        self.last_dev = self.dev_accuracy()
        return self.last_dev["accuracy"] >= target

    def run(self) -> dict:
        """Train until sft.steps or the stop accuracy; write `sft/model`; return a summary."""
        self.model.train()
        start = time.time()
        self.loop()
        main = dist.world().main
        full = dist.full_state_dict(self.model) if dist.is_sharded(self.model) else None
        if main:
            publish_model(self.model, self.tok, self.dir / "model", full)
            note = ending_note(self.step, self.cfg.sft.steps, self.last_dev, self.cfg.sft.stop_at_accuracy)
            if note:
                notice(note)
        dist.barrier()
        return {"sft_steps": self.step, "sft_seconds": time.time() - start, "sft_dev": self.last_dev}
