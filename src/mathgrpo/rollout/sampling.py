"""Token sampling on the device: the filters of transformers' `generate`, an exponential race, no host sync.

The filters run in the order `generate` applies them (temperature, top-k, top-p, min-p) with the
same rules, so a sampled token's log-prob is the log-softmax of exactly the distribution that
`generate` would have sampled from.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .base import SamplingParams


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[B, V] float32 logits -> temperature-scaled scores with filtered tokens set to -inf."""
    scores = logits / params.temperature
    vocab = scores.shape[-1]
    if params.top_k > 0 and params.top_k < vocab:
        kth = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1 - params.top_p)
        drop_sorted[..., -1:] = False  # the most likely token always stays
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    if params.min_p > 0.0:
        probs = scores.softmax(dim=-1)
        drop = probs < params.min_p * probs.amax(dim=-1, keepdim=True)
        drop.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def filters_active(params: SamplingParams) -> bool:
    """Whether any of top-k, top-p or min-p removes tokens (otherwise the sampling distribution is the policy's)."""
    return params.top_k > 0 or params.top_p < 1.0 or params.min_p > 0.0


def sample(logits: torch.Tensor, params: SamplingParams, generator: Optional[torch.Generator] = None,
           pick: Optional[Callable] = None) -> tuple:
    """(token [B] long, log-prob [B] float32, policy log-prob [B] float32) drawn from the filtered distribution of
    `logits` [B, V] (any float dtype; the arithmetic is float32).

    The log-prob is that of the filtered distribution the token was drawn from; the policy log-prob is the
    token's log-prob under the temperature-scaled policy before any filter, which is what the learner computes
    (the two are the same tensor when no filter is on). Greedy (temperature 0) takes the argmax and reports 0
    for both (a point mass). Sampling is an exponential race: argmax(log p - log E) with E ~ Exp(1) picks token
    i with probability p_i, using only device kernels, so it can live inside a CUDA graph. The draws E come
    from `generator`; `pick` (default `race_pick`) is the rest, which the engine may pass compiled.
    """
    if params.greedy:
        token = logits.argmax(dim=-1)
        zero = torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device)
        return token, zero, zero
    race = torch.empty(logits.shape, dtype=torch.float32, device=logits.device).exponential_(generator=generator)
    return (pick or race_pick)(logits, race, params)


def race_pick(logits: torch.Tensor, race: torch.Tensor, params: SamplingParams) -> tuple:
    """The winner of the exponential race between the filtered log-probs of `logits` [B, V] and the draws
    `race` [B, V] ~ Exp(1) -> (token, log-prob, policy log-prob) as `sample` returns them."""
    logits = logits.float()
    logp = torch.log_softmax(filter_logits(logits, params), dim=-1)
    # clamp: an exact 0 from the exponential would give +inf and could win over a filtered token
    token = (logp - race.clamp_min(1e-30).log()).argmax(dim=-1)
    return (token, *picked_logprobs(logits, logp, token, params))


def picked_logprobs(logits: torch.Tensor, logp: torch.Tensor, token: torch.Tensor, params: SamplingParams) -> tuple:
    """(filtered log-prob, unfiltered policy log-prob) [B] of `token` [B], given the raw `logits` and the filtered
    log-probs `logp` [B, V]; one tensor twice when no filter is on."""
    chosen = logp.gather(-1, token[:, None])[:, 0]
    return chosen, policy_logprob(logits, token, params) if filters_active(params) else chosen


def policy_logprob(logits: torch.Tensor, token: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """log softmax(logits / temperature) at `token`, one per row: the unfiltered policy's log-prob. [B]"""
    scaled = logits.float() / params.temperature
    return scaled.gather(-1, token[:, None])[:, 0] - torch.logsumexp(scaled, dim=-1)
