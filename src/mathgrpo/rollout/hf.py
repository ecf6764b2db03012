"""The `hf` engine: transformers `generate` with left padding; works for any causal LM, CPU or GPU."""

from __future__ import annotations

from typing import Optional

import torch
from transformers import LogitsProcessorList

from .. import dist
from .base import Generation, RolloutEngine, SamplingParams
from .seeded import SeededLogitsProcessor, SeededSampler


class HFEngine(RolloutEngine):
    """Rollouts through `model.generate` (dynamic KV cache). Slow on GPU, exact and portable."""

    name = "hf"

    def __init__(self, model, tokenizer, stop_ids, batch_size: int = 0, static_cache: bool = False) -> None:
        super().__init__(model, tokenizer, stop_ids, batch_size)
        # A key/value cache allocated once at its full length instead of grown a token at a time (no compile).
        self.static_cache = static_cache

    def _generation_kwargs(self, params: SamplingParams) -> dict:
        """Arguments for `generate` that reproduce `params` (None switches a filter off)."""
        return {
            "max_new_tokens": params.max_new_tokens,
            "eos_token_id": self.stop_ids,
            "pad_token_id": self.tokenizer.pad_token_id,
            "return_dict_in_generate": True,
            # Sampling happens in SeededLogitsProcessor; generate itself decodes greedily.
            "do_sample": False,
            "temperature": None,
            "top_p": None,
            "top_k": None,
            "min_p": None,
            **({"cache_implementation": "static", "disable_compile": True} if self.static_cache else {}),
        }

    @torch.no_grad()
    def _run(self, prompts: list, params: SamplingParams, seeds: list) -> list:
        """Generate one completion per prompt string in one padded batch."""
        device = next(self.model.parameters()).device
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        kwargs = self._generation_kwargs(params)
        sampler = None
        if not params.greedy:
            sampler = SeededSampler(seeds, device)
            kwargs["logits_processor"] = LogitsProcessorList([SeededLogitsProcessor(sampler, params)])
        out = self.model.generate(**enc, **kwargs)
        width = enc["input_ids"].shape[1]
        new = out.sequences[:, width:]
        logprobs = torch.stack(sampler.chosen_logprobs, dim=1) if sampler and sampler.chosen_logprobs else None  # [B, C]
        policy = torch.stack(sampler.policy_logprobs, dim=1) if logprobs is not None else None  # [B, C]
        results = []
        for i in range(len(prompts)):
            ids = new[i].tolist()
            stop_at = next((j for j, t in enumerate(ids) if t in self.stop_ids), None)
            ids = ids[: stop_at + 1] if stop_at is not None else ids  # no stop: the row ran to the end, all real
            prompt_ids = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
            lp = logprobs[i, : len(ids)].tolist() if logprobs is not None else None
            plp = policy[i, : len(ids)].tolist() if policy is not None else None
            results.append(Generation(i, prompt_ids, ids, self.decode(ids), stop_at is not None, lp, plp))
        return results

    def generate(self, prompts: list, n: int, params: SamplingParams, seeds: Optional[list] = None) -> list:
        """`n` completions per prompt, in batches of `batch_size` sequences (0 = all at once)."""
        flat = [p for p in prompts for _ in range(n)]
        seeds = list(seeds) if seeds is not None else self.default_seeds(len(flat))
        step = self.batch_size or len(flat) or 1
        out = []
        was_training = self.model.training
        self.model.eval()
        # Under FSDP every rank takes part in gathering the weights, even one with no prompts.
        with dist.gathered(self.model):
            try:
                for start in range(0, len(flat), step):
                    for g in self._run(flat[start : start + step], params, seeds[start : start + step]):
                        g.prompt_index = (start + g.prompt_index) // n
                        out.append(g)
            finally:
                self.model.train(was_training)
        return out
