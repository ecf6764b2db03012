"""The clipped policy loss and its normalisations, on small hand-made tensors."""

import math

import pytest
import torch

from mathgrpo.training.loss import LossSettings, policy_loss

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
ADV = torch.tensor([1.0, -2.0])


def test_on_policy_loss_per_normalisation():
    """With ratio 1 the per-token loss is -A; each loss_type averages it its own way."""
    logp = torch.zeros(2, 3, requires_grad=True)
    expected = {
        "dapo": (-1 * 3 + 2 * 1) / 4,  # token mean over the batch
        "grpo": ((-1.0) + 2.0) / 2,  # per-sequence mean, then mean over sequences
        "dr_grpo": (-3 + 2) / (2 * 5),  # sum / (sequences x max_completion_length)
    }
    for loss_type, value in expected.items():
        loss, stats = policy_loss(logp, logp.detach(), ADV, MASK, LossSettings(loss_type=loss_type, max_completion_length=5))
        assert loss.item() == pytest.approx(value), loss_type
        assert stats["tokens"] == 4 and stats["clipped_tokens"] == 0


def test_gradient_is_advantage_weighted():
    """d loss / d logp = -A / tokens on counted tokens, zero on masked ones (dapo)."""
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, _ = policy_loss(logp, logp.detach(), ADV, MASK, LossSettings(loss_type="dapo"))
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.25, -0.25, -0.25], [0.5, 0.0, 0.0]]))


def test_clipping_asymmetric():
    """A ratio above 1+eps_high with positive advantage is clipped (no gradient); clip-higher widens it."""
    logp = torch.full((1, 1), math.log(1.25), requires_grad=True)
    old = torch.zeros(1, 1)
    adv, mask = torch.tensor([1.0]), torch.ones(1, 1)
    loss, stats = policy_loss(logp, old, adv, mask, LossSettings(epsilon_high=0.2))
    loss.backward()
    assert stats["clipped_tokens"] == 1 and logp.grad.item() == 0.0
    logp.grad = None
    loss, stats = policy_loss(logp, old, adv, mask, LossSettings(epsilon_high=0.28))
    loss.backward()
    assert stats["clipped_tokens"] == 0 and logp.grad.item() == pytest.approx(-1.25)


def test_sequence_level_ratio_is_geometric_mean():
    """GSPO: every token's ratio equals the sequence's length-normalised ratio."""
    logp = torch.tensor([[0.2, 0.4]], requires_grad=True)
    old = torch.zeros(1, 2)
    loss, _ = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2),
                          LossSettings(importance_sampling_level="sequence", epsilon_high=10, loss_type="dapo"))
    assert loss.item() == pytest.approx(-math.exp(0.3))


def test_kl_k3_is_zero_at_reference_and_positive_away():
    """The k3 KL term vanishes when policy equals reference and adds beta x KL otherwise."""
    logp = torch.zeros(1, 2)
    _, stats = policy_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), LossSettings(beta=0.1), ref_logp=logp)
    assert stats["kl_sum"] == 0
    ref = torch.tensor([[-1.0, -1.0]])
    loss, stats = policy_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), LossSettings(beta=0.1), ref_logp=ref)
    k3 = math.exp(-1) + 1 - 1
    assert stats["kl_sum"] == pytest.approx(2 * k3) and loss.item() == pytest.approx(0.1 * k3)


def test_micro_batches_add_up_to_the_whole():
    """Losses of two halves, normalised by the whole batch's counts, sum to the whole batch's loss."""
    torch.manual_seed(0)
    logp, old = torch.randn(4, 5) * 0.1, torch.randn(4, 5) * 0.1
    adv, mask = torch.randn(4), (torch.rand(4, 5) > 0.3).float()
    for loss_type in ("dapo", "grpo", "dr_grpo"):
        s = LossSettings(loss_type=loss_type, max_completion_length=5)
        whole, _ = policy_loss(logp, old, adv, mask, s)
        tokens = float(mask.sum())
        parts = sum(policy_loss(logp[i:i + 2], old[i:i + 2], adv[i:i + 2], mask[i:i + 2], s, None, tokens, 4)[0] for i in (0, 2))
        assert parts.item() == pytest.approx(whole.item(), rel=1e-5), loss_type
