"""A GRPO step's rollouts as named records: the completions sampled, the grader's verdicts, the rewards, and the
step's metrics of them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import dist


@dataclass
class Rollouts:
    """This rank's share of one step: its problems and their completions, group by group (prompt 0's G first)."""

    problems: list  # [n] Problem
    generations: list  # [n*G] Generation: token ids, text, the engine's log-probs
    verdicts: list  # [n*G] Verdict: the grader's one decision on each completion
    rewards: torch.Tensor  # [n*G] total reward: the weighted parts summed
    parts: dict  # {reward name: [n*G] floats}: each part as logged

    def __len__(self) -> int:
        return len(self.generations)

    def tokens(self) -> int:
        """Completion tokens sampled on this rank."""
        return sum(len(g.token_ids) for g in self.generations)


@dataclass(frozen=True)
class RolloutRow:
    """What the step's metrics need of one completion; the rows of every rank are gathered."""

    reward: float
    parts: tuple  # the reward parts, in the order of `Rollouts.parts`
    length: int  # completion tokens
    truncated: bool  # cut at rollout.max_new_tokens
    well_formed: bool
    kept: bool  # in a group the step trains on
    correct: bool


def rollout_rows(rollouts: Rollouts, keep: torch.Tensor) -> list:
    """One `RolloutRow` per completion; `keep` [n*G]: the completions the step trains on."""
    names = list(rollouts.parts)
    return [
        RolloutRow(float(rollouts.rewards[i]), tuple(rollouts.parts[name][i] for name in names), len(g.token_ids),
                   not g.finished, v.well_formed, bool(keep[i]), v.correct)
        for i, (g, v) in enumerate(zip(rollouts.generations, rollouts.verdicts))
    ]


def rollout_metrics(rollouts: Rollouts, keep: torch.Tensor) -> dict:
    """Reward (mean, std, each part), accuracy and format rate (from the verdicts, whatever the reward preset),
    completion length, truncated and kept fractions of the step's completions, over all ranks."""
    rows = dist.gather_concat(rollout_rows(rollouts, keep))
    n = len(rows)
    totals = torch.tensor([r.reward for r in rows])
    m = {"reward": float(totals.mean()), "reward_std": float(totals.std()) if n > 1 else 0.0}
    for j, name in enumerate(rollouts.parts):
        m[f"rewards/{name}"] = sum(r.parts[j] for r in rows) / n
    m["accuracy"] = sum(r.correct for r in rows) / n
    m["completion_length"] = sum(r.length for r in rows) / n
    m["truncated_fraction"] = sum(r.truncated for r in rows) / n
    m["format_rate"] = sum(r.well_formed for r in rows) / n
    m["kept_fraction"] = sum(r.kept for r in rows) / n
    return m
