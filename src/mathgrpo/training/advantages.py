"""Group-relative advantages: each completion's reward against the other completions of its prompt."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .. import dist
from ..config import GRPOConfig


@dataclass
class Advantages:
    """A step's advantages, and which completions it trains on."""

    values: torch.Tensor  # [n*G]
    keep: torch.Tensor  # [n*G] bool: in a group whose rewards differ (grpo.dynamic_sampling), else all True
    kept: int  # completions kept, over all ranks


def step_advantages(rewards: torch.Tensor, g: GRPOConfig) -> Advantages:
    """The advantages of this rank's rewards [n*G] as grpo.scale_rewards says (`batch`: the std of every rank's
    rewards), and with grpo.dynamic_sampling only the groups that carry a signal kept."""
    G, scale = g.num_generations, g.scale_rewards
    values = group_advantages(rewards, G, scale, batch_std=global_std(rewards) if scale == "batch" else None)
    keep = torch.ones(rewards.numel(), dtype=torch.bool)
    if g.dynamic_sampling:
        keep = informative_groups(rewards, G).repeat_interleave(G)
    return Advantages(values, keep, int(dist.all_sum(float(keep.sum()))))


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4,
                     batch_std: float | None = None) -> torch.Tensor:
    """Advantages for rewards laid out group by group.

    rewards: [B*G] total reward per completion, prompt 0's G completions first.
    scale: `group` divides by each group's std (GRPO), `batch` by the std of the whole batch,
    `none` only subtracts the group mean (Dr. GRPO: std scaling biases toward easy or hard prompts).
    batch_std: the std of the whole step's rewards when they are spread over ranks (default: of `rewards`).
    Returns [B*G].
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)  # [B, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / ((rewards.std() if batch_std is None else batch_std) + eps)
    elif scale != "none":
        raise ValueError(f"unknown scale_rewards {scale!r}; use group, batch or none")
    return centred.reshape(-1)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] True where a group's rewards are not all equal (DAPO's dynamic sampling keeps only these)."""
    grouped = rewards.view(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) > 1e-6


def global_std(rewards: torch.Tensor) -> Optional[float]:
    """The unbiased std of the step's rewards over all ranks (None for one process: computed locally)."""
    if not dist.world().active:
        return None
    n = dist.all_sum(float(rewards.numel()))
    total = dist.all_sum(float(rewards.double().sum()))
    squares = dist.all_sum(float(rewards.double().pow(2).sum()))
    return math.sqrt(max(squares - total * total / n, 0.0) / max(n - 1, 1.0))
