"""A step's rollouts as named records, and their metrics against hand-computed values."""

import pytest
import torch

from mathgrpo.grading.judge import Verdict
from mathgrpo.rollout import Generation
from mathgrpo.training.rollouts import RolloutRow, Rollouts, rollout_metrics, rollout_rows


def gen(prompt: int, tokens: int, finished: bool) -> Generation:
    return Generation(prompt, [1, 2], list(range(tokens)), "text", finished)


@pytest.fixture
def rollouts() -> Rollouts:
    """Two prompts, two completions each: one right and well formed, one cut at the token limit."""
    verdicts = [Verdict("5", True, True), Verdict(None, False, False), Verdict("7", False, True), Verdict("3", True, True)]
    return Rollouts(problems=["p0", "p1"], generations=[gen(0, 4, True), gen(0, 8, False), gen(1, 2, True), gen(1, 6, True)],
                    verdicts=verdicts, rewards=torch.tensor([1.1, 0.0, 0.1, 1.1]),
                    parts={"correct": [1.0, 0.0, 0.0, 1.0], "format_exact": [0.1, 0.0, 0.1, 0.1]})


def test_a_row_per_completion_with_its_parts_in_order(rollouts):
    rows = rollout_rows(rollouts, torch.tensor([True, True, False, False]))
    assert len(rollouts) == 4 and rollouts.tokens() == 20
    assert rows[1] == RolloutRow(reward=0.0, parts=(0.0, 0.0), length=8, truncated=True, well_formed=False, kept=True,
                                 correct=False)
    assert rows[3].parts == (1.0, 0.1) and rows[3].correct and not rows[3].kept


def test_metrics_of_the_step(rollouts):
    m = rollout_metrics(rollouts, torch.tensor([True, True, False, False]))
    assert m["reward"] == pytest.approx(0.575) and m["reward_std"] == pytest.approx(float(rollouts.rewards.std()))
    assert m["rewards/correct"] == 0.5 and m["rewards/format_exact"] == pytest.approx(0.075)
    assert (m["accuracy"], m["format_rate"], m["truncated_fraction"], m["kept_fraction"]) == (0.5, 0.75, 0.25, 0.5)
    assert m["completion_length"] == 5.0
