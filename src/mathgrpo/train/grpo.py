"""The GRPO stage: rollouts, rewards, group advantages, the clipped policy loss, LoRA updates.

One step: draw `prompts_per_step` problems, sample `num_generations` completions each with the
rollout engine, score them with the reward functions, turn rewards into advantages within each
group, and take `num_iterations` optimizer steps on the clipped loss. Departures from the GRPO
paper are switches in `GRPOConfig` (loss normalisation, clip-higher, GSPO ratios, no KL by default).
Lifecycle: setup (`__init__`), `resume`, `run` (steps, held-out evaluation, checkpoints), and
clean stops on Ctrl-C, out-of-memory and NaN, each after saving.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Optional

import torch

from . import checkpoint
from .. import dist
from ..config import Config
from ..data.formats import get_format
from ..grading.judge import grade
from ..evaluate.heldout import heldout_accuracy, prompts_for
from ..model.common import is_adapter_dir
from ..model.loading import load_base, load_with_adapter, make_trainable, ready_for_training, stop_token_ids
from .optim import make_optimizer, make_scheduler
from ..progress import StepProgress
from ..grading.rewards import RewardContext, build_rewards
from .stopping import StopRequest, TrainingStopped
from ..rollout import SamplingParams, make_engine
from ..rollout import sequence_seed
from ..tracking import MetricsWriter, truncate_after
from .advantages import group_advantages, informative_groups
from .batch import RolloutBatch, collate
from .logprobs import PassLayout, token_logprobs
from .loss import LossSettings, policy_loss
from .sampler import GapWatch, add_gap, gap_sums, tis_weights
from .sizing import Sizing


def prepare_policy(cfg: Config, start_from: Optional[Path]) -> tuple:
    """The model GRPO trains: the warm-up's adapter (kept training), or a model with fresh LoRA."""
    if start_from is not None and is_adapter_dir(start_from):
        if cfg.model.backend == "unsloth":
            from ..model.unsloth_backend import load_adapter_unsloth

            return load_adapter_unsloth(Path(start_from), cfg.model)
        model, tok = load_with_adapter(Path(start_from), cfg.model, trainable=True)
        ready_for_training(model, cfg.model)
        return model, tok
    model_cfg = cfg.model if start_from is None else type(cfg.model)(**{**cfg.model.__dict__, "name": str(Path(start_from).resolve())})
    model, tok = load_base(model_cfg, seed=cfg.run.seed)
    return make_trainable(model, cfg, cfg.lora.enabled), tok


class DataOrder:
    """Problems in a seeded order, epoch after epoch; its position is part of a checkpoint."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._order = self._shuffled()

    def _shuffled(self) -> list:
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list:
        """The next `k` indices, starting a new epoch when one runs out."""
        out = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffled()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def restore(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffled()


class GRPORun:
    """The GRPO stage of a run folder."""

    def __init__(self, cfg: Config, run_dir: Path, train: list, heldout: list, start_from: Optional[Path] = None) -> None:
        self.cfg, self.dir = cfg, Path(run_dir) / "grpo"
        self.fmt = get_format(cfg.format.preset, cfg.format.system_prompt)
        self.model, self.tok = prepare_policy(cfg, start_from)
        if dist.world().active and cfg.run.parallel == "fsdp":
            dist.shard(self.model)
        self.device = next(self.model.parameters()).device
        self.train_problems, self.heldout = train, heldout
        if not train:
            raise ValueError(f"no training problems from {cfg.data.source}")
        from ..grading.reward_model import load_reward_model  # rewards.model, when set: a classifier on this device

        self.rewards = build_rewards(cfg.rewards.preset, dict(cfg.rewards.weights),
                                     load_reward_model(cfg.rewards, cfg.grpo.num_generations, self.device))
        self.sizing = Sizing.for_model(self.model, cfg, self.device)  # micro-batches, rollout batch, offload, snapshots
        self.layout = PassLayout()  # how log-prob passes lay batches out (benchmarks set another)
        self.engine = make_engine(cfg.rollout.engine, self.model, self.tok, stop_token_ids(self.tok), lora=cfg.rollout.lora)
        shares = self.engine.shares_prompt_cache
        self.engine.batch_size = self.sizing.rollout_batch_size(shares)
        self.engine.snapshots_on_device = self.sizing.snapshots_on_device(self.engine.snapshot_bytes(), shares,
                                                                          self.engine.batch_size)
        g = cfg.grpo
        self.opt = make_optimizer(self.model, g.lr, g.weight_decay)
        self.sched = make_scheduler(self.opt, g.lr_scheduler, g.warmup_steps, g.steps * g.num_iterations)
        self.order = DataOrder(len(train), cfg.run.seed)
        self.loss_settings = LossSettings(
            g.loss_type, g.epsilon_low, g.epsilon_high, g.importance_sampling_level, g.beta, cfg.rollout.max_new_tokens
        )
        self.params = SamplingParams(
            cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k, cfg.rollout.min_p
        )
        self.gap_watch = GapWatch(next(self.model.parameters()).dtype)
        self.step = 0
        self.history: dict = {}
        self._start_order, self._updated = self.order.state(), False  # where the current step began

    # ---- lifecycle -------------------------------------------------------------------------

    def resume(self) -> bool:
        """Continue from the newest GRPO checkpoint; False when there is none."""
        ckpt = checkpoint.latest(self.dir / "checkpoints")
        if ckpt is None:
            self._truncate_logs(-1)  # rows of a run killed before its first checkpoint
            return False
        extra = checkpoint.load(ckpt, self.model, self.opt, self.sched)
        self.step = extra["step"]
        self.order.restore(extra["order"])
        self.history = extra.get("history", {})
        self._truncate_logs(self.step)
        print(f"grpo: resumed from {ckpt} (step {self.step})")
        return True

    def _truncate_logs(self, step: int) -> None:
        """Drop logged rows after `step` (they are logged again by the resumed run)."""
        for name in ("metrics.jsonl", "samples.jsonl"):
            if (self.dir / name).exists() and dist.world().main:
                truncate_after(self.dir / name, step)

    def save_checkpoint(self) -> Path:
        """Checkpoint the current step (adapter, optimizer, scheduler, RNGs, data position); rank 0 writes."""
        extra = {"order": self.order.state(), "history": self.history}
        return checkpoint.save(self.dir / "checkpoints", self.step, self.model, self.tok, self.opt, self.sched, extra,
                               self.cfg.run.keep_last)

    def evaluate(self) -> dict:
        """Greedy accuracy on the held-out set."""
        return heldout_accuracy(self.engine, self.heldout, self.fmt, self.cfg.format.template, self.cfg.rollout.max_new_tokens)

    # ---- one step --------------------------------------------------------------------------

    def rollout(self) -> tuple:
        """(problems, generations, verdicts, total rewards [n*G], reward parts) for this rank's share of the next
        prompts. Each completion is graded once; rewards and metrics read that verdict.

        Every rank draws the same global list of problems and takes its contiguous share; each
        sequence is sampled with a seed from (run seed, step, global prompt index, sample index),
        so with the hf engine a sequence is the same whatever the number of ranks or the batch it lands
        in (the native engine seeds each call, so there it matches in distribution).
        """
        G = self.cfg.grpo.num_generations
        offset, problems = dist.share([self.train_problems[i] for i in self.order.take(self.cfg.grpo.prompts_per_step)])
        prompts = prompts_for(problems, self.fmt, self.tok, self.cfg.format.template)
        seeds = [sequence_seed(self.cfg.run.seed, self.step, offset + i, j) for i in range(len(problems)) for j in range(G)]
        gens = self.engine.generate(prompts, G, self.params, seeds)
        per_gen = [problems[g.prompt_index] for g in gens]
        verdicts = [grade(g.text, p, self.fmt) for g, p in zip(gens, per_gen)]
        ctxs = [
            RewardContext(self.fmt, self.params.max_new_tokens, len(g.token_ids), not g.finished,
                          self.cfg.rewards.overlong_buffer, v)
            for g, v in zip(gens, verdicts)
        ]
        total, parts = self.rewards([g.text for g in gens], per_gen, ctxs)
        return problems, gens, verdicts, torch.tensor(total, dtype=torch.float32), parts

    def _logps(self, micro: RolloutBatch) -> torch.Tensor:
        """Completion log-probs of one micro-batch under the current weights. [n, C]"""
        return token_logprobs(self.model, micro.input_ids, micro.attention_mask, micro.prompt_width,
                              self.params.temperature or 1.0, self.sizing.chunk_tokens, self.layout)

    def _reference_logps(self, batch: RolloutBatch) -> None:
        """Fill old_logp (num_iterations > 1) and ref_logp (beta > 0) without gradients, micro-batch by micro-batch.

        With one iteration per batch the old policy is the current one, so its log-probs are the
        detached current ones (ratio 1) and this pass is skipped: one forward less per step.
        """
        need_old, need_ref = self.cfg.grpo.num_iterations > 1, self.cfg.grpo.beta > 0
        if not (need_old or need_ref):
            return
        C = batch.completion_mask.shape[1]
        old = torch.zeros((len(batch), C), device=self.device) if need_old else None
        ref = torch.zeros((len(batch), C), device=self.device) if need_ref else None
        with torch.no_grad():
            for index in batch.micro_indices(self._micro_size(batch)):
                micro = batch.rows(index)
                width = micro.completion_mask.shape[1]
                if need_old:
                    old[index, :width] = self._logps(micro).float()
                if need_ref:
                    with self.model.disable_adapter():
                        ref[index, :width] = self._logps(micro).float()
        batch.old_logp, batch.ref_logp = old, ref

    def _micro_size(self, batch: RolloutBatch) -> int:
        """Sequences per pass over `batch`, as the sizing decides; frees the engine's kept cache when it says to."""
        micro = self.sizing.micro(len(batch), batch.input_ids.shape[1], self.engine.held_bytes(), self.layout.width_multiple)
        if micro.release_engine_cache:
            self.engine.release()
        if micro.note:
            print(micro.note)
        return micro.size

    def _clock(self) -> float:
        """Wall time once the GPU has finished the work queued so far, so each phase is timed on its own."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def optimize(self, batch: Optional[RolloutBatch], total_seqs: int) -> dict:
        """num_iterations optimizer steps on this rank's `batch` (None: nothing kept here).

        The loss is normalised by the counts of the whole step over all ranks, and gradients are
        summed over ranks before clipping, so the update equals one process doing all of it.
        Returns loss, clip fraction, KL, grad norm and phase times.
        """
        total_tokens = dist.all_sum(float(batch.completion_mask.sum()) if batch is not None else 0.0)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        stats = {"loss": 0.0, "clipped_tokens": 0.0, "kl_sum": 0.0, "tokens": 0.0, "grad_norm": 0.0}
        times = {"logprob_time": 0.0, "backward_time": 0.0, "optimizer_time": 0.0}
        size = self._micro_size(batch) if batch is not None else 0
        gap: dict = {}
        for iteration in range(self.cfg.grpo.num_iterations):
            size, part = self._accumulate_fitting(batch, size, total_tokens, total_seqs, times)
            measured = part.pop("gap")
            if not iteration:  # the policy that sampled: before this batch's first update
                add_gap(gap, measured)
            for k, v in part.items():
                stats[k] += v
            t0 = self._clock()
            dist.sum_gradients(trainable)
            norm = torch.nn.utils.clip_grad_norm_(trainable, self.cfg.grpo.max_grad_norm)
            norm = dist.full_value(norm)
            if not math.isfinite(norm) or not math.isfinite(stats["loss"]):
                raise FloatingPointError(f"loss {stats['loss']} / grad norm {norm}")
            self.opt.step()
            self.sched.step()
            self._updated = True
            stats["grad_norm"] += norm
            times["optimizer_time"] += self._clock() - t0
        iters = self.cfg.grpo.num_iterations
        for k in ("loss", "clipped_tokens", "kl_sum", "tokens"):
            stats[k] = dist.all_sum(stats[k])
        tokens = max(stats["tokens"], 1.0)
        return {"loss": stats["loss"] / iters, "clip_fraction": stats["clipped_tokens"] / tokens,
                "kl": stats["kl_sum"] / tokens, "grad_norm": stats["grad_norm"] / iters, "micro_batch_size": size,
                **self._gap_metrics(gap), **times}

    @staticmethod
    def _gap_metrics(gap: dict) -> dict:
        """sampler_gap_mean / _max and sampler_kl over all ranks' counted tokens (none when no engine log-probs)."""
        local = {k: float(gap.get(k, 0.0)) for k in ("tokens", "gap_sum", "gap_max", "kl_sum")}  # the step's one sync
        tokens = dist.all_sum(local["tokens"])  # collectives: every rank calls each, in this order
        biggest = max(dist.gather(local["gap_max"])) if dist.world().active else local["gap_max"]
        if not tokens:
            return {}
        return {"sampler_gap_mean": dist.all_sum(local["gap_sum"]) / tokens, "sampler_gap_max": biggest,
                "sampler_kl": dist.all_sum(local["kl_sum"]) / tokens}

    def _accumulate_fitting(self, batch, size: int, total_tokens: float, total_seqs: int, times: dict) -> tuple:
        """`_accumulate`, retried with half the micro-batch when a planned size runs out of GPU memory.

        Whether to retry, and with how many, is the sizing's call (`Sizing.after_out_of_memory`: a single
        process whose micro-batches the memory plan sized; it keeps the smaller size for later steps).
        Returns (size used, stats).
        """
        while True:
            self.opt.zero_grad(set_to_none=True)
            try:
                return size, self._accumulate(batch, size, total_tokens, total_seqs, times)
            except torch.cuda.OutOfMemoryError:
                width = batch.input_ids.shape[1]
                smaller = self.sizing.after_out_of_memory(size, width)
                if not smaller:
                    raise
                torch.cuda.empty_cache()
                print(f"grpo: out of GPU memory at {size} sequences of {width} tokens per micro-batch; "
                      f"retrying the step with {smaller} (kept for later steps)")
                size = smaller

    def _accumulate(self, batch, size: int, total_tokens: float, total_seqs: int, times: dict) -> dict:
        """Forward and backward over every micro-batch of `size` sequences, gradients summed; the loss statistics."""
        stats = {"loss": 0.0, "clipped_tokens": 0.0, "kl_sum": 0.0, "tokens": 0.0, "gap": {}}
        for micro in batch.micro_batches(size) if batch is not None else []:
            t0 = self._clock()
            logp = self._logps(micro)
            old = micro.old_logp if micro.old_logp is not None else logp.detach()
            weights = self._sampler_weights(micro, old, stats["gap"])
            loss, st = policy_loss(logp, old, micro.advantages, micro.completion_mask, self.loss_settings,
                                   micro.ref_logp, total_tokens, total_seqs, weights)
            t1 = self._clock()
            loss.backward()
            stats["loss"] += loss.item()
            t2 = self._clock()
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
        if self.cfg.grpo.sampler_correction != "tis":
            return None
        return tis_weights(learner, micro.sampler_logp, self.cfg.grpo.tis_cap)

    def learn(self, batch: Optional[RolloutBatch], total_seqs: int) -> dict:
        """The training half of a step: reference log-probs where needed, then the optimizer steps."""
        self.model.train()
        t0 = self._clock()
        if batch is not None:
            self._reference_logps(batch)
        metrics = {"reference_time": self._clock() - t0}
        metrics.update(self.optimize(batch, total_seqs))
        return metrics

    def train_step(self) -> dict:
        """One GRPO step; returns its metrics (the same on every rank)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._start_order, self._updated = self.order.state(), False
        t0 = self._clock()
        problems, gens, verdicts, total, parts = self.rollout()
        t_roll = self._clock() - t0
        G = self.cfg.grpo.num_generations
        scale = self.cfg.grpo.scale_rewards
        adv = group_advantages(total, G, scale, batch_std=self._global_std(total) if scale == "batch" else None)
        keep = torch.ones(len(gens), dtype=torch.bool)
        if self.cfg.grpo.dynamic_sampling:
            keep = informative_groups(total, G).repeat_interleave(G)
        total_seqs = int(dist.all_sum(float(keep.sum())))
        metrics = self._rollout_metrics(gens, verdicts, total, parts, keep)
        if total_seqs:
            kept = [g for g, k in zip(gens, keep.tolist()) if k]
            batch = collate(kept, adv[keep], self.tok.pad_token_id, self.cfg.grpo.mask_truncated, self.device) if kept else None
            metrics.update(self.learn(batch, total_seqs))
        self.step += 1
        n_tokens = dist.all_sum(float(sum(len(g.token_ids) for g in gens)))
        dt = self._clock() - t0
        metrics.update({"lr": self.sched.get_last_lr()[0], "step_time": dt, "rollout_time": t_roll, "tokens_per_s": n_tokens / dt})
        if self.device.type == "cuda":
            metrics["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self._log_samples(problems, gens, total)
        warning = self.gap_watch.check(self.step, metrics.get("sampler_gap_mean"), metrics.get("sampler_gap_max"))
        if warning and dist.world().main:
            print(warning, flush=True)
        return metrics

    def _global_std(self, rewards: torch.Tensor) -> Optional[float]:
        """The unbiased std of the step's rewards over all ranks (None for one process: computed locally)."""
        if not dist.world().active:
            return None
        n = dist.all_sum(float(rewards.numel()))
        total = dist.all_sum(float(rewards.double().sum()))
        squares = dist.all_sum(float(rewards.double().pow(2).sum()))
        return math.sqrt(max(squares - total * total / n, 0.0) / max(n - 1, 1.0))

    def _rollout_metrics(self, gens: list, verdicts: list, total: torch.Tensor, parts: dict, keep: torch.Tensor) -> dict:
        """Reward parts, accuracy and format rate (from the verdicts, whatever the reward preset), lengths and
        truncation of the step's rollouts, over all ranks."""
        names = list(parts)
        local = [
            (float(total[i]), [parts[n][i] for n in names], len(g.token_ids), not g.finished,
             verdicts[i].well_formed, bool(keep[i]), verdicts[i].correct)
            for i, g in enumerate(gens)
        ]
        rows = dist.gather_concat(local)
        n = len(rows)
        totals = torch.tensor([r[0] for r in rows])
        m = {"reward": float(totals.mean()), "reward_std": float(totals.std()) if n > 1 else 0.0}
        for j, name in enumerate(names):
            m[f"rewards/{name}"] = sum(r[1][j] for r in rows) / n
        m["accuracy"] = sum(r[6] for r in rows) / n
        m["completion_length"] = sum(r[2] for r in rows) / n
        m["truncated_fraction"] = sum(r[3] for r in rows) / n
        m["format_rate"] = sum(r[4] for r in rows) / n
        m["kept_fraction"] = sum(r[5] for r in rows) / n
        return m

    def _log_samples(self, problems: list, gens: list, total: torch.Tensor) -> None:
        """Every run.sample_every steps, append the first group's completions to samples.jsonl."""
        if self.step % self.cfg.run.sample_every or not dist.world().main:
            return
        G = self.cfg.grpo.num_generations
        rows = [{"step": self.step, "question": problems[0].question, "gold": problems[0].answer,
                 "completion": g.text, "reward": float(r)} for g, r in zip(gens[:G], total[:G].tolist())]
        with open(self.dir / "samples.jsonl", "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    # ---- the loop --------------------------------------------------------------------------

    def _heldout_row(self, key: str) -> dict:
        acc = self.evaluate()
        self.history[key] = acc["accuracy"]
        return {"heldout_accuracy": acc["accuracy"], "heldout_format_rate": acc["format_rate"], "heldout_length": acc["length"]}

    def run(self) -> dict:
        """Steps until grpo.steps with held-out accuracy at start, every run.eval_every steps and at the end."""
        self.dir.mkdir(parents=True, exist_ok=True)
        main_rank = dist.world().main
        writer = MetricsWriter(self.dir, self.cfg.run.report_to, "grpo") if main_rank else None
        if self.step == 0 and "start" not in self.history:
            row = self._heldout_row("start")
            if writer:
                writer.log(0, row)
        progress = StepProgress("grpo", self.cfg.grpo.steps, self.step, enabled=self.cfg.run.progress and main_rank)
        try:
            with StopRequest("grpo") as stop:
                while self.step < self.cfg.grpo.steps:
                    row = self._guarded_step()
                    if self.step % self.cfg.run.eval_every == 0 or self.step == self.cfg.grpo.steps:
                        row.update(self._heldout_row(f"step{self.step}"))
                    if writer:
                        writer.log(self.step, row)
                    progress.update(self.step, self._status(row))
                    if self.step % self.cfg.run.checkpoint_every == 0 or self.step == self.cfg.grpo.steps:
                        self.save_checkpoint()
                    if stop.agreed():
                        path = self.save_checkpoint()
                        print(f"grpo: interrupted; saved {path}. Continue with --resume {self.dir.parent}", flush=True)
                        raise KeyboardInterrupt
        finally:
            progress.close()
            if writer:
                writer.close()
        return {"accuracy_before_grpo": self.history.get("start"), "accuracy_after_grpo": self.history.get(f"step{self.step}"), "steps": self.step}

    @staticmethod
    def _status(row: dict) -> str:
        """The progress line: reward, training accuracy and (when measured) the largest sampler gap."""
        gap = f" gap {row['sampler_gap_max']:.3f}" if "sampler_gap_max" in row else ""
        return f"reward {row['reward']:.2f} acc {row['accuracy']:.2f}{gap}"

    def _save_step_start(self) -> Optional[Path]:
        """Checkpoint the state the failed step started from; None when part of it was already applied."""
        if self._updated:
            return None
        self.order.restore(self._start_order)
        return self.save_checkpoint()

    def _guarded_step(self) -> dict:
        """A step that, on NaN or out-of-memory, saves the state it started from and says what to change."""
        try:
            return self.train_step()
        except FloatingPointError as err:
            path = self._save_step_start()  # every rank sees the same (all-reduced) grad norm: all save
            saved = f"Saved the state before this step to {path}" if path else "Part of the step was applied; resume from the last checkpoint"
            raise TrainingStopped(
                f"grpo step {self.step + 1}: non-finite {err}. {saved}. "
                "Lower grpo.lr, keep grpo.max_grad_norm at 1.0, or check the rewards for NaN; then --resume."
            ) from None
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            # One rank runs out alone; the others cannot join a collective save, so save only alone.
            path = None if dist.world().active else self._save_step_start()
            saved = f"Saved the state before this step to {path}" if path else "Resume from the last checkpoint"
            raise TrainingStopped(
                f"grpo step {self.step + 1}: out of GPU memory. {saved}. Lower grpo.micro_batch_size, "
                "rollout.batch_size or rollout.max_new_tokens, or set grpo.max_memory_gb; then --resume."
            ) from None
