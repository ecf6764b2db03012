"""Did the rollouts come from the policy being trained? The sampler gap, its warning, and the TIS correction.

Each engine returns, for every sampled token, its log-prob under the policy it sampled from
(`Generation.policy_logprobs`: temperature-scaled, before top-k/top-p/min-p). The learner computes the
log-prob of the same token under the weights it is about to update. The two differ only by arithmetic
(bf16 rounding, kernel order) when the engine is right; a rollout from stale weights, a wrong cache or a
wrong random stream shows up here first:

- `sampler_gap_mean` / `sampler_gap_max`: mean and largest |learner - sampler| over completion tokens;
- `sampler_kl`: the k3 estimate of KL(sampler || learner), exp(d) - 1 - d with d = learner - sampler.

Truncated importance sampling (TIS, as TRL and veRL apply it to vLLM rollouts) weights each token's
policy-gradient term by min(exp(learner - sampler), cap): the update is then one for samples of the
learner's own distribution, up to the cap.
"""

from __future__ import annotations

from typing import Optional

import torch

# Mean |learner - sampler| (nats) of a correct engine, the larger of what docs/performance.md records for the
# default run and the Qwen3-4B shape on an H100 (bf16 0.002-0.038, float32 0.00015-0.00018; float16 not measured:
# bf16's figure over 8, its three more mantissa bits). The warning fires at WARN_FACTOR times this: far above
# rounding, far below the 2 nats of a rollout from stale buffers.
ROUNDING_NOISE = {torch.bfloat16: 0.04, torch.float16: 0.005, torch.float32: 2e-4}
WARN_FACTOR = 10.0


def gap_sums(learner: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor) -> dict:
    """Sums over the counted tokens of one micro-batch: |gap|, its max, the k3 KL and the token count, as 0-d
    tensors on the batch's device (no host sync in the loss loop; the caller reads them once a step).

    learner, sampler, mask: [N, T]; the caller adds the sums over micro-batches (and ranks) and divides.
    """
    with torch.no_grad():
        counted = mask > 0
        diff = (learner.float() - sampler.float()).masked_fill(~counted, 0.0)
        k3 = (torch.exp(diff) - 1 - diff).masked_fill(~counted, 0.0)
        gap = diff.abs()
        return {
            "gap_sum": gap.sum(),
            "gap_max": gap.max() if gap.numel() else gap.new_zeros(()),
            "kl_sum": k3.sum(),
            "tokens": counted.sum().float(),
        }


def add_gap(total: dict, part: dict) -> dict:
    """Add one micro-batch's `gap_sums` into `total` (sums add, the max is the larger); returns `total`."""
    for k, v in part.items():
        if k not in total:
            total[k] = v
        else:
            total[k] = torch.maximum(total[k], v) if k == "gap_max" else total[k] + v
    return total


def tis_weights(learner: torch.Tensor, sampler: torch.Tensor, cap: float) -> torch.Tensor:
    """min(exp(learner - sampler), cap) per token, without gradient. [N, T]"""
    with torch.no_grad():
        return torch.exp(learner.float() - sampler.float()).clamp(max=cap)


class GapWatch:
    """Warns once when the mean sampler gap is far above the rounding noise of the model's dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.noise = ROUNDING_NOISE.get(dtype, ROUNDING_NOISE[torch.bfloat16])
        self.dtype = dtype
        self.warned = False

    def check(self, step: int, gap_mean: Optional[float], gap_max: Optional[float]) -> Optional[str]:
        """The warning for this step's gap, once per run; None when the gap is at noise level or already warned."""
        if self.warned or gap_mean is None or gap_mean <= WARN_FACTOR * self.noise:
            return None
        self.warned = True
        return (f"grpo step {step}: the rollout engine's log-probs are {gap_mean:.3g} nats (mean; max {gap_max:.3g}) "
                f"from the learner's for the same tokens, {gap_mean / self.noise:.0f}x the {self.dtype} rounding "
                f"noise ({self.noise:g}): the rollouts may not come from the policy being trained. Compare with "
                "rollout.engine=hf; grpo.sampler_correction=tis (the default) caps each token's weight at grpo.tis_cap.")
