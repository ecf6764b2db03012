"""Sizing: how many sequences a GRPO run puts in one training pass and one generate call, whether its
checkpointed layer inputs go to the host, and whether the rollout engine keeps base-weight copies on the GPU.

One `Sizing` per run, built from the config, the memory plan (`memory.py`; None on a CPU without
grpo.max_memory_gb) and the world's facts (the device, several processes, sharded weights). Its queries
return decisions and change nothing: the trainer acts on them (frees the engine's kept cache when a
`MicroPlan` says so, prints its note). The one piece of state is what an out-of-memory error taught:
`after_out_of_memory` halves the micro-batch and keeps the smaller size for later steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from .. import dist
from ..config import Config
from ..model.checkpointing import keep_refusal
from ..model.compiled import compiled
from ..model.loading import checkpoint_layers, uncheckpoint_layers
from ..model.offload import offload_checkpoints
from ..progress import notice
from .logprobs import pass_width
from .memory import MemoryPlan, plan_for_model
from .stopping import TrainingStopped

KEEP_NOTE = ("grpo: the memory plan fits a full micro-batch with each checkpointed layer's GEMM and attention outputs kept; "
             "backward recomputes only norms and activations (model.checkpoint_matmuls=false turns this off)")
COMPILED_KEEP_NOTE = ("grpo: the memory plan fits a full micro-batch with each layer's GEMM and attention outputs kept; "
                      "the compiled layers run without checkpointing and keep them (model.checkpoint_matmuls=false "
                      "turns this off)")
OFFLOAD_NOTE = ("grpo: a full micro-batch at model.max_seq_length does not fit the memory plan; offloading checkpointed "
                "layer inputs to pinned host memory (model.offload_checkpoints=false turns this off)")


@dataclass(frozen=True)
class MicroPlan:
    """A micro-batch decision for one batch."""

    size: int  # sequences per forward/backward pass
    release_engine_cache: bool = False  # free the rollout engine's kept memory first: it would shrink `size`
    note: Optional[str] = None  # a line for the log (nothing fits the plan: trying one sequence a pass)


class Sizing:
    """The batch, offload and snapshot decisions of one GRPO run (see the module docstring)."""

    def __init__(self, cfg: Config, plan: Optional[MemoryPlan], device: Any = "cpu", distributed: bool = False,
                 sharded: bool = False, offloaded: bool = False) -> None:
        self.cfg, self.plan, self.device = cfg, plan, torch.device(device)
        self.distributed, self.sharded = distributed, sharded  # several processes; FSDP-sharded weights
        self.offloaded = offloaded  # checkpointed layer inputs kept on the host (the plan counts them so)
        self.token_cap = 0  # sequences x width per micro-batch known to run out of memory, halved (0: none)

    @classmethod
    def for_model(cls, model: Any, cfg: Config, device: Any) -> "Sizing":
        """The sizing of a run training `model`: plans its memory and, when `offload_wanted` and the model has
        checkpointed layers, turns their offloading on and plans again; when `keep_matmuls_fits` instead, has its
        checkpointed layers keep their products (compiled layers: runs them without checkpointing, the compiler
        keeps the products) and plans with them."""
        facts = {"device": device, "distributed": dist.world().active, "sharded": dist.is_sharded(model)}
        offloaded = cfg.model.offload_checkpoints is True  # already applied at loading
        kept = cfg.model.checkpoint_matmuls is True  # likewise
        sizing = cls(cfg, plan_for_model(model, cfg, device, offloaded, kept), offloaded=offloaded, **facts)
        way = sizing.checkpoint_way(plan_for_model(model, cfg, device, keep_matmuls=True, quiet=True))
        if way == "host" and not offloaded and offload_checkpoints(model) > 0:
            notice(OFFLOAD_NOTE)
            return cls(cfg, plan_for_model(model, cfg, device, offload=True), offloaded=True, **facts)
        is_compiled = compiled(model)
        if way == "products" and not kept and (is_compiled or keep_refusal(model) is None):
            if is_compiled:
                uncheckpoint_layers(model)  # the compiled layers' backward keeps the products itself
            else:
                checkpoint_layers(model, keep_matmuls=True)
            notice(COMPILED_KEEP_NOTE if is_compiled else KEEP_NOTE)
            return cls(cfg, plan_for_model(model, cfg, device, keep_matmuls=True), **facts)
        return sizing

    @property
    def chunk_tokens(self) -> int:
        """Tokens per chunk of the chunked log-probs: the plan's, or 2048 without one."""
        return self.plan.chunk_tokens if self.plan else 2048

    @property
    def step_sequences(self) -> int:
        """Completions one step samples (all ranks)."""
        return self.cfg.grpo.prompts_per_step * self.cfg.grpo.num_generations

    def token_limit(self, width: int) -> int:
        """Sequences of `width` tokens that grpo.micro_batch_tokens allows in one pass (at least 1; no limit at 0)."""
        tokens = self.cfg.grpo.micro_batch_tokens
        return max(1, tokens // width) if tokens else 1 << 30

    def offload_wanted(self) -> bool:
        """model.offload_checkpoints=null on one process with the default backend, products not kept by
        model.checkpoint_matmuls=true: offload when the memory plan cannot fit the micro-batch the step wants."""
        cfg, plan = self.cfg, self.plan
        if (cfg.model.offload_checkpoints is not None or plan is None or cfg.model.backend != "transformers" or self.distributed
                or cfg.model.checkpoint_matmuls):
            return False
        return not self._fits_whole_micro_batch(plan)

    def keep_matmuls_fits(self, kept: Optional[MemoryPlan]) -> bool:
        """model.checkpoint_matmuls=null on one process with the default backend and checkpointing on a GPU (inputs not
        offloaded by model.offload_checkpoints=true): keep the checkpointed layers' products when `kept` (the plan
        with them kept) still fits the micro-batch the step wants, so the recompute they save costs no smaller
        passes."""
        cfg = self.cfg
        if (cfg.model.checkpoint_matmuls is not None or kept is None or cfg.model.backend != "transformers" or self.distributed
                or not cfg.model.gradient_checkpointing or self.device.type != "cuda" or cfg.model.offload_checkpoints):
            return False
        return self._fits_whole_micro_batch(kept)

    def _fits_whole_micro_batch(self, plan: MemoryPlan) -> bool:
        """Whether `plan` fits the micro-batch a step wants at model.max_seq_length: all its completions, or as many
        as grpo.micro_batch_tokens allows."""
        width = self.cfg.model.max_seq_length
        return plan.micro_batch(width) >= min(self.step_sequences, self.token_limit(width))

    def checkpoint_way(self, kept: Optional[MemoryPlan]) -> str:
        """What checkpointed layers keep, as set or as this plan (products not kept) decides with `kept` (the plan with
        them kept): "host" (their inputs, offloaded), "products" (their GEMM and attention outputs too) or "inputs"."""
        m = self.cfg.model
        if m.checkpoint_matmuls:
            return "products"
        if m.offload_checkpoints or self.offload_wanted():
            return "host"
        return "products" if self.keep_matmuls_fits(kept) else "inputs"

    def rollout_fits(self, shares_prompt: bool, held: int = 0) -> int:
        """Sequences of model.max_seq_length tokens one generate call holds under the plan (prompts counted once
        per group where the engine shares them), beside `held` bytes the engine keeps."""
        group = self.cfg.grpo.num_generations if shares_prompt else 1
        new = min(self.cfg.rollout.max_new_tokens, self.cfg.model.max_seq_length)
        return self.plan.rollout_batch(self.cfg.model.max_seq_length, new, group, held=held)

    def rollout_batch_size(self, shares_prompt: bool, held: int = 0) -> int:
        """rollout.batch_size, or (0) the most sequences of max_seq_length tokens the memory plan lets one
        generate call of an engine hold (`shares_prompt`: it caches a prompt once per group) beside the `held`
        bytes of weight copies it makes for every call (FP8 rollouts), at most a step's."""
        if self.cfg.rollout.batch_size or self.plan is None:
            return self.cfg.rollout.batch_size
        fits = self.rollout_fits(shares_prompt, held)
        if fits < 1:
            raise TrainingStopped(f"{self.plan.summary(self.cfg.model.max_seq_length)}: not one rollout fits. Raise "
                                  "grpo.max_memory_gb, lower model.max_seq_length, or use model.load_in_4bit with model.backend=unsloth")
        return min(fits, self.step_sequences)

    def snapshots_fit(self, need: int, shares_prompt: bool, batch: int) -> bool:
        """Whether `need` bytes of base-weight copies can stay on the GPU (restoring the weights after a merged-LoRA
        rollout is then a device copy, not a transfer of every projection from host memory) while the plan still
        fits the engine's rollout batch (`batch`; 0 = the whole step) in one generate call at model.max_seq_length."""
        if self.plan is None or not need:
            return False
        return self.rollout_fits(shares_prompt, held=need) >= (batch or self.step_sequences)

    def snapshots_on_device(self, need: int, shares_prompt: bool, batch: int) -> bool:
        """Keep the native engine's copies of the LoRA-merged base weights on the GPU: rollout.device_snapshots,
        or (null) when `snapshots_fit`."""
        wanted = self.cfg.rollout.device_snapshots
        return self.snapshots_fit(need, shares_prompt, batch) if wanted is None else wanted

    def micro(self, rows: int, width: int, held: int = 0, width_multiple: Optional[int] = None) -> MicroPlan:
        """The micro-batch for a batch of `rows` sequences `width` tokens wide while the rollout engine keeps
        `held` bytes: grpo.micro_batch_size, or (0) what the memory plan fits at the width the pass runs at (at
        most grpo.micro_batch_tokens tokens, below a size that ran out of memory), or the whole batch.

        When the kept bytes would shrink the micro-batch, the plan says to release them (the next rollout
        rebuilds the cache in a fraction of a second) rather than train with fewer sequences a pass.
        Under FSDP every rank must run as many passes as the others (each gathers weights collectively),
        so the width planned for is the widest over the ranks: then every rank calls this together.
        """
        if self.cfg.grpo.micro_batch_size or self.plan is None:
            return MicroPlan(self.cfg.grpo.micro_batch_size or rows)
        width = pass_width(width, self.device, width_multiple)
        if self.sharded:
            width = max(dist.gather(width))
        wanted = min(rows, self.token_limit(width))
        if self.token_cap:  # a size that ran out of memory before: stay below it
            wanted = min(wanted, max(1, self.token_cap // width))
        fits, alone = self.plan.micro_batch(width, held), self.plan.micro_batch(width)
        release = bool(held) and fits < min(alone, wanted)
        fits = min(alone if release else fits, wanted)
        note = f"grpo: {self.plan.summary(width)}; trying 1 sequence per micro-batch" if fits < 1 else None
        return MicroPlan(max(1, fits), release, note)

    def after_out_of_memory(self, size: int, width: int) -> int:
        """The micro-batch to retry a step with after `size` sequences of `width` tokens ran out of GPU memory:
        half as many, kept as a cap for later steps; 0 when this run does not retry (a set grpo.micro_batch_size,
        no plan, several processes that must run equal passes, or one sequence already)."""
        if size <= 1 or self.plan is None or self.cfg.grpo.micro_batch_size or self.distributed:
            return 0
        self.token_cap = size // 2 * width
        return size // 2
