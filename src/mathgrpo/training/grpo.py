"""The GRPO stage: rollouts, rewards, group advantages, the clipped policy loss, LoRA updates.

One step (`GRPORun.train_step`, read top to bottom): draw `prompts_per_step` problems, sample
`num_generations` completions each with the rollout engine, grade each once and reward it from that
verdict (`rollout`: a `rollouts.Rollouts`), turn rewards into advantages within each group
(`advantages.step_advantages`), pad the kept completions into a batch and take `num_iterations`
optimizer steps on the clipped loss (`update.PolicyUpdate`), then log the step's metrics. Departures
from the GRPO paper are switches in `GRPOConfig` (loss normalisation, clip-higher, GSPO ratios, no KL
by default). Resume, checkpoints, the loop and clean stops (Ctrl-C, out-of-memory, NaN, each after
saving) are the shared `stage.Stage` lifecycle.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional

import torch

from .. import dist
from ..config import Config, RolloutConfig
from ..data.formats import get_format, prompts_for
from ..evaluation.heldout import heldout_accuracy
from ..grading.judge import grade
from ..grading.rewards import RewardContext, build_rewards
from ..model.common import is_adapter_dir
from ..model.compiled import training_passes
from ..model.loading import load_base, load_with_adapter, make_trainable, ready_for_training, stop_token_ids, training_attention
from ..model.reward_model import load_reward_model
from ..progress import notice
from ..rollout import RolloutEngine, SamplingParams, choose_engine, make_engine, sequence_seed
from .advantages import Advantages, step_advantages
from .batch import RolloutBatch, collate
from .fitting import fitting_problems
from .loss import LossSettings
from .rollouts import Rollouts, rollout_metrics
from .sampler import GapWatch
from .sizing import Sizing
from .stage import Stage
from .update import PolicyUpdate


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


def sized_engine(model, tok, r: RolloutConfig, sizing: Sizing) -> RolloutEngine:
    """The rollout engine, built with the batch size and the snapshot placement that the memory plan gives the
    engine `rollout.engine` chooses."""
    choice = choose_engine(r.engine, model, r.lora, r.precision)
    batch = sizing.rollout_batch_size(choice.shares_prompt_cache, choice.copy_bytes)
    snapshots = sizing.snapshots_on_device(choice.snapshot_bytes, choice.shares_prompt_cache, batch)
    return make_engine(choice, model, tok, stop_token_ids(tok), batch, snapshots_on_device=snapshots, hf_cache=r.hf_cache,
                       skinny_gemm=r.skinny_gemm)


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


class GRPORun(Stage):
    """The GRPO stage of a run folder."""

    name = label = "grpo"
    logs = ("metrics.jsonl", "samples.jsonl")
    nan_advice = "Lower grpo.lr, keep grpo.max_grad_norm at 1.0, or check the rewards for NaN"
    oom_advice = ("Lower grpo.micro_batch_size, rollout.batch_size or rollout.max_new_tokens, set grpo.max_memory_gb, "
                  "or set model.checkpoint_matmuls=false where its products are kept")

    def __init__(self, cfg: Config, run_dir: Path, train: list, heldout: list, start_from: Optional[Path] = None) -> None:
        super().__init__(cfg, run_dir)
        g, r = cfg.grpo, cfg.rollout
        self.fmt = get_format(cfg.format.preset, cfg.format.system_prompt, cfg.format.instruction)
        model, self.tok = prepare_policy(cfg, start_from)
        self.device = self.prepare(model)
        if not train:
            raise ValueError(f"no training problems from {cfg.data.source}")
        train = fitting_problems(train, "training", cfg, self.model, self.tok, self.fmt)
        heldout = fitting_problems(heldout, "held-out", cfg, self.model, self.tok, self.fmt)
        self.train_problems, self.heldout = train, heldout
        self.rewards = build_rewards(cfg.rewards.preset, dict(cfg.rewards.weights),
                                     load_reward_model(cfg.rewards, g.num_generations, self.device))
        self.sizing = Sizing.for_model(self.model, cfg, self.device)  # micro-batches, rollout batch, offload, snapshots
        self.engine = sized_engine(self.model, self.tok, r, self.sizing)
        self.train_with(g.lr, g.weight_decay, g.lr_scheduler, g.warmup_steps, g.steps * g.num_iterations, g.max_grad_norm)
        loss = LossSettings(g.loss_type, g.epsilon_low, g.epsilon_high, g.importance_sampling_level, g.beta, r.max_new_tokens)
        self.update = PolicyUpdate(self.model, self.stepper, self.precision, g, loss, self.sizing, r.temperature,
                                   held_bytes=self.engine.held_bytes, release=self.engine.release)
        self.order = DataOrder(len(train), cfg.run.seed)
        self.params = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k, r.min_p)
        self.gap_watch = GapWatch(self.precision.dtype)
        self.history: dict = {}
        self._start_order = self.order.state()  # where the current step began

    # ---- the stage's own part of the lifecycle ---------------------------------------------

    @property
    def steps(self) -> int:
        return self.cfg.grpo.steps

    def extra(self) -> dict:
        return {"order": self.order.state(), "history": self.history}

    def restore(self, extra: dict) -> None:
        self.order.restore(extra["order"])
        self.history = extra.get("history", {})

    def evaluate(self) -> dict:
        """Greedy accuracy on the held-out set."""
        return heldout_accuracy(self.engine, self.heldout, self.fmt, self.cfg.format.template, self.cfg.rollout.max_new_tokens)

    def _heldout_row(self, key: str) -> dict:
        acc = self.evaluate()
        self.history[key] = acc["accuracy"]
        return {"heldout_accuracy": acc["accuracy"], "heldout_format_rate": acc["format_rate"], "heldout_length": acc["length"]}

    def before_loop(self, writer) -> None:
        """Held-out accuracy of the starting model (once: a resumed run has it in its history)."""
        if self.step == 0 and "start" not in self.history:
            row = self._heldout_row("start")
            if writer:
                writer.log(0, row)

    def step_row(self) -> tuple:
        """One step's metrics, with held-out accuracy every run.eval_every steps and at the end."""
        row = self.train_step()
        if self.step % self.cfg.run.eval_every == 0 or self.step == self.steps:
            row.update(self._heldout_row(f"step{self.step}"))
        return row, False

    def status(self, row: dict) -> str:
        """The progress line: reward, training accuracy and (when measured) the largest sampler gap."""
        gap = f" gap {row['sampler_gap_max']:.3f}" if "sampler_gap_max" in row else ""
        return f"reward {row['reward']:.2f} acc {row['accuracy']:.2f}{gap}"

    def state_before_step(self) -> Optional[Path]:
        """Checkpoint the state the failed step started from; None when part of it was already applied."""
        if self.update.applied:
            return None
        self.order.restore(self._start_order)
        return self.save_checkpoint()

    def run(self) -> dict:
        """Steps until grpo.steps with held-out accuracy at start, every run.eval_every steps and at the end."""
        self.loop()
        return {"accuracy_before_grpo": self.history.get("start"), "accuracy_after_grpo": self.history.get(f"step{self.step}"),
                "steps": self.step}

    # ---- one step --------------------------------------------------------------------------

    def train_step(self) -> dict:
        """One GRPO step, read top to bottom; returns its metrics (the same on every rank)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._start_order, self.update.applied = self.order.state(), False
        t0 = self.update.clock()
        rollouts = self.rollout()  # Rollouts: completions, their verdicts and rewards [n*G]
        rollout_time = self.update.clock() - t0
        adv = step_advantages(rollouts.rewards, self.cfg.grpo)  # Advantages: values and kept completions [n*G]
        metrics = rollout_metrics(rollouts, adv.keep)  # rewards, accuracy, lengths over all ranks
        if adv.kept:
            batch = self.batch(rollouts, adv)  # RolloutBatch of this rank's kept completions, or None
            metrics.update(self.learn(batch, adv.kept))  # log-probs -> sampler gap -> loss -> optimizer step
        self.step += 1
        metrics.update(self.step_times(rollouts, t0, rollout_time))
        self._log_samples(rollouts)
        self._check_gap(metrics)
        return metrics

    def rollout(self) -> Rollouts:
        """This rank's share of the next prompts with G completions each, every completion graded once and
        rewarded from that verdict (the metrics read the same verdicts).

        Every rank draws the same global list of problems and takes its contiguous share; each
        sequence is sampled with a seed from (run seed, step, global prompt index, sample index),
        so with the hf engine a sequence is the same whatever the number of ranks or the batch it lands
        in (the native engine seeds each call, so there it matches in distribution).
        """
        G = self.cfg.grpo.num_generations
        offset, problems = dist.share([self.train_problems[i] for i in self.order.take(self.cfg.grpo.prompts_per_step)])
        prompts = prompts_for(problems, self.fmt, self.tok, self.cfg.format.template)
        seeds = [sequence_seed(self.cfg.run.seed, self.step, offset + i, j) for i in range(len(problems)) for j in range(G)]
        gens = self.engine.generate(prompts, G, self.params, seeds)  # [n*G]
        per_gen = [problems[g.prompt_index] for g in gens]
        verdicts = [grade(g.text, p, self.fmt) for g, p in zip(gens, per_gen)]  # [n*G]
        ctxs = [RewardContext(self.fmt, self.params.max_new_tokens, len(g.token_ids), not g.finished,
                              self.cfg.rewards.overlong_buffer, v) for g, v in zip(gens, verdicts)]
        total, parts = self.rewards([g.text for g in gens], per_gen, ctxs)
        return Rollouts(problems, gens, verdicts, torch.tensor(total, dtype=torch.float32), parts)

    def batch(self, rollouts: Rollouts, adv: Advantages) -> Optional[RolloutBatch]:
        """This rank's kept completions padded into one batch with their advantages; None when it kept none."""
        kept = [g for g, k in zip(rollouts.generations, adv.keep.tolist()) if k]
        if not kept:
            return None
        return collate(kept, adv.values[adv.keep], self.tok.pad_token_id, self.cfg.grpo.mask_truncated, self.device)

    def learn(self, batch: Optional[RolloutBatch], total_seqs: int) -> dict:
        """The training half of a step (`PolicyUpdate.learn`), with the SDPA backends chosen for training and the
        compiled decoder layers where model.compile_layers gave them."""
        with training_attention(self.cfg.model, self.device), training_passes(self.model):
            return self.update.learn(batch, total_seqs)

    def step_times(self, rollouts: Rollouts, t0: float, rollout_time: float) -> dict:
        """The learning rate, the step's wall times and token rate (all ranks), and on a GPU its peak memory."""
        n_tokens = dist.all_sum(float(rollouts.tokens()))
        dt = self.update.clock() - t0
        m = {"lr": self.sched.get_last_lr()[0], "step_time": dt, "rollout_time": rollout_time, "tokens_per_s": n_tokens / dt}
        if self.device.type == "cuda":
            m["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return m

    def _check_gap(self, metrics: dict) -> None:
        """Say once when the engine's log-probs stop matching the learner's (`sampler.GapWatch`)."""
        warning = self.gap_watch.check(self.step, metrics.get("sampler_gap_mean"), metrics.get("sampler_gap_max"))
        if warning:
            notice(warning)

    def _log_samples(self, rollouts: Rollouts) -> None:
        """Every run.sample_every steps, append the first group's completions to samples.jsonl."""
        if self.step % self.cfg.run.sample_every or not dist.world().main:
            return
        G, first = self.cfg.grpo.num_generations, rollouts.problems[0]
        rows = [{"step": self.step, "question": first.question, "gold": first.answer, "completion": g.text,
                 "reward": float(r)} for g, r in zip(rollouts.generations[:G], rollouts.rewards[:G].tolist())]
        with open(self.dir / "samples.jsonl", "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
