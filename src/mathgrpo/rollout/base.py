"""The rollout-engine interface: prompts in, G completions each out, with their sampling log-probs."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: temperature 0 is greedy; top_k 0, top_p 1 and min_p 0 are off."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Generation:
    """One completion of one prompt."""

    prompt_index: int  # position of its prompt in the request
    prompt_ids: list  # [P] prompt token ids, no padding
    token_ids: list  # [C] completion token ids, the stop token included when one was produced
    text: str  # decoded completion, stop token removed, markers kept
    finished: bool  # ended on a stop token (False: cut at max_new_tokens)
    logprobs: Optional[list] = None  # [C] log-prob of each token under the sampling distribution
    # [C] log-prob of each token under the temperature-scaled policy before top-k/top-p/min-p filters: what the
    # learner computes for the same token, so the two differ only by arithmetic (equal to logprobs without filters)
    policy_logprobs: Optional[list] = None


def sequence_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, step, prompt index, sample index...)."""
    digest = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class RolloutEngine(ABC):
    """Generates completions with the current policy weights."""

    name = "base"
    # Whether a prompt's keys and values are cached once for its n samples (memory plans count them so).
    shares_prompt_cache = False

    def __init__(self, model: Any, tokenizer: Any, stop_ids: list, batch_size: int = 0) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = list(stop_ids)
        self.batch_size = batch_size  # sequences generated at once (0: all; a trainer sizes it from its memory plan)

    def held_bytes(self) -> int:
        """Device memory this engine keeps between calls (a reused KV cache); none by default."""
        return 0

    def release(self) -> None:
        """Free what `held_bytes` counts; the next call builds it again."""

    @abstractmethod
    def generate(self, prompts: list, n: int, params: SamplingParams, seeds: Optional[list] = None) -> list:
        """`n` Generations per prompt, grouped: prompt 0's n first, then prompt 1's, ...

        seeds: one per generated sequence (len(prompts) * n) for batch-independent sampling;
        None draws them from torch's global RNG.
        """

    @staticmethod
    def default_seeds(count: int) -> list:
        """Per-sequence seeds drawn from torch's global RNG (so torch.manual_seed makes runs repeat)."""
        base = int(torch.randint(0, 2**62, (1,)).item())
        return [sequence_seed(base, i) for i in range(count)]

    def decode(self, token_ids: list) -> str:
        """Completion text without the stop token, markers kept (they may be added tokens)."""
        ids = [t for t in token_ids if t not in self.stop_ids and t != self.tokenizer.pad_token_id]
        return self.tokenizer.decode(ids, skip_special_tokens=False)
