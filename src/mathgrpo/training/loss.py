"""The clipped policy loss of GRPO and its variants (Dr. GRPO, DAPO, GSPO), with an optional KL term.

All inputs are per completion token; `mask` marks the tokens that count (completion tokens, minus
truncated completions when those are masked). Shapes: N completions, T completion positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LossSettings:
    """The switches of the loss (see GRPOConfig for what each one means and where it comes from)."""

    loss_type: str = "dapo"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    importance_sampling_level: str = "token"
    beta: float = 0.0
    max_completion_length: int = 1  # Dr. GRPO's constant normaliser


def _importance_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """exp(logp - old_logp) per token, or GSPO's one length-normalised ratio per sequence. [N, T]"""
    log_ratio = logp - old_logp
    if level == "sequence":
        seq = (log_ratio * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [N]
        # The value is the sequence ratio; gradients flow through each token's logp (GSPO-token form).
        log_ratio = logp - logp.detach() + seq.detach()[:, None]
    return torch.exp(log_ratio)


def _reduce(per_token: torch.Tensor, mask: torch.Tensor, settings: LossSettings, total_tokens: float, total_seqs: int) -> torch.Tensor:
    """Sum per-token losses into the batch loss by the normalisation of `loss_type`.

    total_tokens / total_seqs are the counts of the whole optimizer batch, so micro-batches add up
    to the same loss as one big batch would.
    """
    masked = per_token * mask
    if settings.loss_type == "dapo":
        return masked.sum() / max(total_tokens, 1.0)
    if settings.loss_type == "dr_grpo":
        return masked.sum() / (total_seqs * settings.max_completion_length)
    if settings.loss_type == "grpo":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum() / total_seqs
    raise ValueError(f"unknown loss_type {settings.loss_type!r}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    settings: LossSettings,
    ref_logp: torch.Tensor | None = None,
    total_tokens: float | None = None,
    total_seqs: int | None = None,
    weights: torch.Tensor | None = None,
) -> tuple:
    """(loss, stats) for one micro-batch.

    logp, old_logp, ref_logp, mask: [N, T]; advantages: [N]. old_logp equal to logp.detach() gives
    ratio 1 (one iteration per batch). weights [N, T] (no gradient) scale each token's policy-gradient term
    (truncated importance sampling of the sampler's distribution). Stats are sums over the micro-batch's counted tokens, for
    the caller to average: clipped tokens, KL, tokens.
    """
    mask = mask.to(logp.dtype)
    total_tokens = float(mask.sum()) if total_tokens is None else total_tokens
    total_seqs = logp.shape[0] if total_seqs is None else total_seqs
    ratio = _importance_ratio(logp, old_logp, mask, settings.importance_sampling_level)
    adv = advantages[:, None].to(logp.dtype)
    clipped = torch.clamp(ratio, 1 - settings.epsilon_low, 1 + settings.epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    if weights is not None:
        per_token = per_token * weights.to(per_token.dtype)
    kl = torch.zeros_like(logp)
    if settings.beta > 0 and ref_logp is not None:
        # k3 estimator of KL(policy || ref): exp(ref - logp) - (ref - logp) - 1, always >= 0.
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + settings.beta * kl
    loss = _reduce(per_token, mask, settings, total_tokens, total_seqs)
    with torch.no_grad():
        is_clipped = ((ratio < 1 - settings.epsilon_low) & (adv < 0)) | ((ratio > 1 + settings.epsilon_high) & (adv > 0))
        stats = {
            "clipped_tokens": float((is_clipped.to(mask.dtype) * mask).sum()),
            "kl_sum": float((kl * mask).sum()),
            "tokens": float(mask.sum()),
        }
    return loss, stats
