"""The learning half of a GRPO step: log-probs of the sampled completions, the clipped loss over
micro-batches, gradients summed over ranks, the optimizer step; the sampler gap on the way.

`PolicyUpdate` holds what this needs (model, optimizer, scheduler, sizing, pass layout) and nothing
of rollouts or rewards: the trainer hands it a collated `RolloutBatch` and gets back the step's
loss statistics and phase times. Of the rollout engine it knows two calls: the bytes it keeps between
rollouts, and freeing them when the sizing says they would shrink the micro-batch.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Callable, Optional

import torch

from .. import dist
from ..config import GRPOConfig
from .batch import RolloutBatch
from ..model.precision import Precision
from ..progress import notice
from . import packing
from .logprobs import PassLayout, token_logprobs
from .optim import OptimizerStep
from .loss import LossSettings, policy_loss
from .sampler import add_gap, gap_sums, tis_weights
from .sizing import Sizing


class PolicyUpdate:
    """num_iterations optimizer steps of the clipped policy loss over a rollout batch, micro-batch by micro-batch."""

    def __init__(self, model: Any, stepper: OptimizerStep, precision: Precision, cfg: GRPOConfig, loss: LossSettings,
                 sizing: Sizing, temperature: float, held_bytes: Callable[[], int] = lambda: 0,
                 release: Callable[[], None] = lambda: None) -> None:
        self.model, self.stepper, self.precision, self.cfg = model, stepper, precision, cfg
        self.loss_settings, self.sizing = loss, sizing
        self.held_bytes, self.release = held_bytes, release  # the rollout engine's kept memory, and freeing it
        self.temperature = temperature or 1.0
        self.device = next(model.parameters()).device
        self.layout = PassLayout(pack=cfg.packed_passes)  # how log-prob passes lay batches out (benchmarks set another)
        self.applied = False  # an optimizer step of the current GRPO step has been taken
        self._said_unpacked = False  # the notice that this model's passes cannot be packed was given

    def clock(self) -> float:
        """Wall time once the GPU has finished the work queued so far, so each phase is timed on its own."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def logps(self, micro: RolloutBatch) -> torch.Tensor:
        """Completion log-probs of one micro-batch under the current weights (float16: under autocast). [n, C]"""
        with self.precision.autocast():
            return token_logprobs(self.model, micro.input_ids, micro.attention_mask, micro.prompt_width,
                                  self.temperature, self.sizing.chunk_tokens, self.layout)

    def micro_size(self, batch: RolloutBatch) -> int:
        """Sequences per pass over `batch`, as the sizing decides; frees the engine's kept cache when it says to."""
        micro = self.sizing.micro(len(batch), batch.input_ids.shape[1], self.held_bytes(), self.layout.width_multiple)
        if micro.release_engine_cache:
            self.release()
        if micro.note:
            notice(micro.note)
        return micro.size

    def learn(self, batch: Optional[RolloutBatch], total_seqs: int) -> dict:
        """Reference log-probs where needed, then the optimizer steps; `batch` None: nothing kept on this rank."""
        self.model.train()
        with self.attention():  # forward and backward: checkpointed layers run attention again there
            t0 = self.clock()
            if batch is not None:
                self.reference_logps(batch)
            metrics = {"reference_time": self.clock() - t0}
            metrics.update(self.optimize(batch, total_seqs))
        return metrics

    def attention(self):
        """The context the step's passes run in: packed passes where the layout asks and the model allows (where it
        does not, said once)."""
        if not self.layout.pack:
            return nullcontext(False)
        refusal = packing.supported(self.model)
        if refusal and not self._said_unpacked:
            notice(f"grpo.packed_passes: {refusal}; its passes run as rows")
            self._said_unpacked = True
        return packing.attention(self.model)

    def packed(self) -> bool:
        """Whether this step's passes are packed (then micro-batches keep each prompt's completions together)."""
        return self.layout.pack and packing.active(self.model)

    def reference_logps(self, batch: RolloutBatch) -> None:
        """Fill old_logp (num_iterations > 1) and ref_logp (beta > 0) without gradients, micro-batch by micro-batch.

        With one iteration per batch the old policy is the current one, so its log-probs are the
        detached current ones (ratio 1) and this pass is skipped: one forward less per step.
        """
        need_old, need_ref = self.cfg.num_iterations > 1, self.cfg.beta > 0
        if not (need_old or need_ref):
            return
        C = batch.completion_mask.shape[1]
        old = torch.zeros((len(batch), C), device=self.device) if need_old else None
        ref = torch.zeros((len(batch), C), device=self.device) if need_ref else None
        with torch.no_grad():
            for index in batch.micro_indices(self.micro_size(batch), self.packed()):
                micro = batch.rows(index)
                width = micro.completion_mask.shape[1]
                if need_old:
                    old[index, :width] = self.logps(micro).float()
                if need_ref:
                    with self.model.disable_adapter():
                        ref[index, :width] = self.logps(micro).float()
        batch.old_logp, batch.ref_logp = old, ref

    def optimize(self, batch: Optional[RolloutBatch], total_seqs: int) -> dict:
        """num_iterations optimizer steps on this rank's `batch` (None: nothing kept here).

        The loss is normalised by the counts of the whole step over all ranks, and gradients are
        summed over ranks before clipping, so the update equals one process doing all of it.
        Returns loss, clip fraction, KL, grad norm, sampler gap and phase times.
        """
        total_tokens = dist.all_sum(float(batch.completion_mask.sum()) if batch is not None else 0.0)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        stats = {"loss": 0.0, "clipped_tokens": 0.0, "kl_sum": 0.0, "tokens": 0.0, "grad_norm": 0.0}
        times = {"logprob_time": 0.0, "backward_time": 0.0, "optimizer_time": 0.0}
        size = self.micro_size(batch) if batch is not None else 0
        gap: dict = {}
        for iteration in range(self.cfg.num_iterations):
            size, part = self._accumulate_fitting(batch, size, total_tokens, total_seqs, times)
            measured = part.pop("gap")
            if not iteration:  # the policy that sampled: before this batch's first update
                add_gap(gap, measured)
            for k, v in part.items():
                stats[k] += v
            t0 = self.clock()
            norm, stepped = self.stepper.step(trainable, stats["loss"])
            stats["grad_norm"] += norm
            self.applied = self.applied or stepped
            times["optimizer_time"] += self.clock() - t0
        iters = self.cfg.num_iterations
        for k in ("loss", "clipped_tokens", "kl_sum", "tokens"):
            stats[k] = dist.all_sum(stats[k])
        tokens = max(stats["tokens"], 1.0)
        return {"loss": stats["loss"] / iters, "clip_fraction": stats["clipped_tokens"] / tokens,
                "kl": stats["kl_sum"] / tokens, "grad_norm": stats["grad_norm"] / iters, "micro_batch_size": size,
                **gap_metrics(gap), **times, **self.stepper.metrics()}

    def _accumulate_fitting(self, batch, size: int, total_tokens: float, total_seqs: int, times: dict) -> tuple:
        """`_accumulate`, retried with half the micro-batch when a planned size runs out of GPU memory.

        Whether to retry, and with how many, is the sizing's call (`Sizing.after_out_of_memory`: a single
        process whose micro-batches the memory plan sized; it keeps the smaller size for later steps).
        Returns (size used, stats).
        """
        while True:
            self.stepper.opt.zero_grad(set_to_none=True)
            try:
                return size, self._accumulate(batch, size, total_tokens, total_seqs, times)
            except torch.cuda.OutOfMemoryError:
                width = batch.input_ids.shape[1]
                smaller = self.sizing.after_out_of_memory(size, width)
                if not smaller:
                    raise
                torch.cuda.empty_cache()
                notice(f"grpo: out of GPU memory at {size} sequences of {width} tokens per micro-batch; "
                       f"retrying the step with {smaller} (kept for later steps)")
                size = smaller

    def _accumulate(self, batch, size: int, total_tokens: float, total_seqs: int, times: dict) -> dict:
        """Forward and backward over every micro-batch of `size` sequences, gradients summed; the loss statistics."""
        stats = {"loss": 0.0, "clipped_tokens": 0.0, "kl_sum": 0.0, "tokens": 0.0, "gap": {}}
        for micro in batch.micro_batches(size, self.packed()) if batch is not None else []:
            t0 = self.clock()
            logp = self.logps(micro)
            old = micro.old_logp if micro.old_logp is not None else logp.detach()
            weights = self._sampler_weights(micro, old, stats["gap"])
            loss, st = policy_loss(logp, old, micro.advantages, micro.completion_mask, self.loss_settings,
                                   micro.ref_logp, total_tokens, total_seqs, weights)
            t1 = self.clock()
            self.stepper.backward(loss)
            stats["loss"] += loss.item()
            t2 = self.clock()
            times["logprob_time"] += t1 - t0
            times["backward_time"] += t2 - t1
            for k in ("clipped_tokens", "kl_sum", "tokens"):
                stats[k] += st[k]
        return stats

    def _sampler_weights(self, micro: RolloutBatch, learner: torch.Tensor, gap: dict) -> Optional[torch.Tensor]:
        """Add the micro-batch's sampler gap (learner vs engine log-probs of its tokens) to `gap`; return the
        truncated importance weights when grpo.sampler_correction=tis (None otherwise, or without engine log-probs)."""
        if micro.sampler_logp is None:
            return None
        add_gap(gap, gap_sums(learner, micro.sampler_logp, micro.completion_mask))
        if self.cfg.sampler_correction != "tis":
            return None
        return tis_weights(learner, micro.sampler_logp, self.cfg.tis_cap)


def gap_metrics(gap: dict) -> dict:
    """sampler_gap_mean / _max and sampler_kl over all ranks' counted tokens (none when no engine log-probs)."""
    local = {k: float(gap.get(k, 0.0)) for k in ("tokens", "gap_sum", "gap_max", "kl_sum")}  # the step's one sync
    tokens = dist.all_sum(local["tokens"])  # collectives: every rank calls each, in this order
    biggest = max(dist.gather(local["gap_max"])) if dist.world().active else local["gap_max"]
    if not tokens:
        return {}
    return {"sampler_gap_mean": dist.all_sum(local["gap_sum"]) / tokens, "sampler_gap_max": biggest,
            "sampler_kl": dist.all_sum(local["kl_sum"]) / tokens}
