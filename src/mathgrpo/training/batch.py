"""Rollouts as tensors: one padded batch per step, cut into micro-batches for the backward pass."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch


@dataclass
class RolloutBatch:
    """The completions of one step with everything the loss needs."""

    input_ids: torch.Tensor  # [N, P+C] prompt left-padded to P, completion right-padded to C
    attention_mask: torch.Tensor  # [N, P+C]
    prompt_width: int  # P
    completion_mask: torch.Tensor  # [N, C] 1 on completion tokens that count in the loss
    advantages: torch.Tensor  # [N]
    old_logp: Optional[torch.Tensor] = None  # [N, C] policy before this step's updates (num_iterations > 1)
    ref_logp: Optional[torch.Tensor] = None  # [N, C] adapter switched off (beta > 0)
    sampler_logp: Optional[torch.Tensor] = None  # [N, C] the rollout engine's log-probs of the same tokens

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, index: torch.Tensor) -> "RolloutBatch":
        """The completions at `index`, trimmed to their own widest prompt and completion."""
        am = self.attention_mask[index]
        prompt_real = am[:, : self.prompt_width].sum(dim=1).max().item()
        comp_len = max(int(am[:, self.prompt_width :].sum(dim=1).max().item()), 1)  # counted tokens are real ones
        lo, hi = self.prompt_width - int(prompt_real), self.prompt_width + comp_len
        cut = lambda t: None if t is None else t[index][:, :comp_len]  # noqa: E731
        return replace(
            self,
            input_ids=self.input_ids[index][:, lo:hi],
            attention_mask=am[:, lo:hi],
            prompt_width=int(prompt_real),
            completion_mask=self.completion_mask[index][:, :comp_len],
            advantages=self.advantages[index],
            old_logp=cut(self.old_logp),
            ref_logp=cut(self.ref_logp),
            sampler_logp=cut(self.sampler_logp),
        )

    def micro_indices(self, size: int, by_prompt: bool = False) -> list:
        """Row indices of micro-batches of at most `size` completions: longest first, grouped by length so
        padding stays small; with `by_prompt`, each prompt's completions side by side (a packed pass runs each
        prompt once and pads nothing, see `packing`)."""
        if by_prompt:
            _, group = torch.unique(self.input_ids[:, : self.prompt_width] * self.attention_mask[:, : self.prompt_width],
                                    dim=0, return_inverse=True)
            order = torch.argsort(group, stable=True)
        else:
            lengths = self.attention_mask[:, self.prompt_width :].sum(dim=1)
            order = torch.argsort(lengths, descending=True, stable=True)
        return [order[i : i + size] for i in range(0, len(self), size)]

    def micro_batches(self, size: int, by_prompt: bool = False) -> list:
        """Micro-batches of at most `size` completions, in the order `micro_indices` gives."""
        return [self.rows(index) for index in self.micro_indices(size, by_prompt)]


def collate(generations: list, advantages: torch.Tensor, pad_id: int, mask_truncated: bool, device: torch.device) -> RolloutBatch:
    """Pad generations into a RolloutBatch; truncated completions get an all-zero mask if asked."""
    P = max(len(g.prompt_ids) for g in generations)
    C = max(max(len(g.token_ids) for g in generations), 1)
    n = len(generations)
    ids = torch.full((n, P + C), pad_id, dtype=torch.long)
    am = torch.zeros((n, P + C), dtype=torch.long)
    cmask = torch.zeros((n, C), dtype=torch.float32)
    for i, g in enumerate(generations):
        p, c = len(g.prompt_ids), len(g.token_ids)
        ids[i, P - p : P] = torch.tensor(g.prompt_ids)
        ids[i, P : P + c] = torch.tensor(g.token_ids, dtype=torch.long)
        am[i, P - p : P + c] = 1
        if not (mask_truncated and not g.finished):
            cmask[i, :c] = 1
    batch = RolloutBatch(ids.to(device), am.to(device), P, cmask.to(device), advantages.to(device))
    batch.sampler_logp = sampler_logprobs(generations, C, device)
    return batch


def sampler_logprobs(generations: list, width: int, device: torch.device) -> Optional[torch.Tensor]:
    """The engine's policy log-prob of every completion token, zero-padded to `width`; None when an engine
    returned none (greedy rollouts). [N, C]"""
    if any(g.policy_logprobs is None for g in generations):
        return None
    out = torch.zeros((len(generations), width), dtype=torch.float32)
    for i, g in enumerate(generations):
        out[i, : len(g.policy_logprobs)] = torch.tensor(g.policy_logprobs, dtype=torch.float32)
    return out.to(device)
