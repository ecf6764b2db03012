"""Sampling that does not depend on how sequences are batched: one seeded noise stream per sequence.

Each sequence draws its own exponential noise from a generator seeded by the caller, and picks
argmax(p / E) (the exponential race, equivalent to sampling from p). So a sequence's completion
is the same whether it is generated alone, in a batch of 256, or on another rank: runs resume
exactly and data-parallel runs equal single-process ones.
"""

from __future__ import annotations

import torch

from .base import SamplingParams
from .sampling import filter_logits, picked_logprobs


def filtered_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Log-probs of the sampling distribution (generate's filters, in generate's order). [B, V] fp32"""
    return torch.log_softmax(filter_logits(logits.float(), params), dim=-1)


class SeededSampler:
    """Per-sequence noise generators; `pick` samples one token per row and remembers its log-prob."""

    def __init__(self, seeds: list, device: torch.device) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.chosen_logprobs: list = []  # per step: [B]
        self.policy_logprobs: list = []  # per step: [B] the unfiltered policy's (see Generation.policy_logprobs)

    def noise(self, vocab: int, device: torch.device) -> torch.Tensor:
        """Exponential(1) noise, one row per sequence from its own generator. [B, V]"""
        rows = [torch.empty(vocab, device=device).exponential_(generator=g) for g in self.generators]
        return torch.stack(rows)

    def pick(self, logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        """One token per row, sampled from the filtered distribution. [B]"""
        logp = filtered_logprobs(logits, params)
        tokens = torch.argmax(logp - self.noise(logp.shape[-1], logp.device).clamp_min(1e-30).log(), dim=-1)
        chosen, policy = picked_logprobs(logits, logp, tokens, params)
        self.chosen_logprobs.append(chosen)
        self.policy_logprobs.append(policy)
        return tokens


class SeededLogitsProcessor:
    """A transformers logits processor that samples with a SeededSampler under greedy decoding.

    It returns scores whose argmax is the sampled token, so `generate(do_sample=False)` keeps it.
    """

    def __init__(self, sampler: SeededSampler, params: SamplingParams) -> None:
        self.sampler, self.params = sampler, params

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        tokens = self.sampler.pick(scores, self.params)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, tokens[:, None], 0.0)
