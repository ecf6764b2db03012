"""Group advantages and the dynamic-sampling filter, against hand-computed values."""

import pytest
import torch

from mathgrpo.training.advantages import group_advantages, informative_groups


def test_group_scaling_by_hand():
    """Two groups of 2: (1, 0) -> (+0.707, -0.707) with unbiased std; (2, 2) -> zeros."""
    adv = group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), 2, "group", eps=0.0)
    half = 0.5 / (0.5 ** 0.5)
    assert torch.allclose(adv[:2], torch.tensor([half, -half]))
    assert torch.equal(group_advantages(torch.tensor([2.0, 2.0]), 2, "group"), torch.zeros(2))


def test_none_only_centres_and_batch_uses_batch_std():
    """none subtracts the group mean; batch divides by the std of all rewards."""
    r = torch.tensor([3.0, 1.0, 0.0, 0.0])
    assert torch.equal(group_advantages(r, 2, "none"), torch.tensor([1.0, -1.0, 0.0, 0.0]))
    batch = group_advantages(r, 2, "batch", eps=0.0)
    assert torch.allclose(batch, torch.tensor([1.0, -1.0, 0.0, 0.0]) / r.std())


def test_bad_layout_and_scale_rejected():
    """Rewards that do not split into groups, or an unknown scale, are errors."""
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(torch.zeros(4), 2, "weird")


def test_informative_groups():
    """Groups whose rewards are all equal carry no signal."""
    keep = informative_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5]), 2)
    assert keep.tolist() == [False, True, False]


def test_step_advantages_keep_every_completion_or_only_groups_with_a_signal():
    """Without dynamic sampling every completion trains; with it a group whose rewards are all equal is dropped,
    and `kept` counts what is left (one process: its own count)."""
    from mathgrpo.config import GRPOConfig
    from mathgrpo.training.advantages import step_advantages

    rewards = torch.tensor([1.0, 0.0, 2.0, 2.0])
    plain = step_advantages(rewards, GRPOConfig(num_generations=2))
    assert plain.keep.tolist() == [True] * 4 and plain.kept == 4
    assert torch.equal(plain.values, group_advantages(rewards, 2, "group"))
    dynamic = step_advantages(rewards, GRPOConfig(num_generations=2, dynamic_sampling=True, scale_rewards="none"))
    assert dynamic.keep.tolist() == [True, True, False, False] and dynamic.kept == 2
    assert torch.equal(dynamic.values, torch.tensor([0.5, -0.5, 0.0, 0.0]))
