"""The sampler gap's sums, the truncated importance weights and the once-only warning."""

import math

import torch

from mathgrpo.training.sampler import WARN_FACTOR, GapWatch, gap_sums, tis_weights


def test_gap_sums_count_only_masked_tokens():
    learner = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 9.0]])
    sampler = torch.tensor([[-1.5, -2.0, -1.0], [-0.5, -0.2, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the last token is padding: its 18-nat gap is ignored
    s = gap_sums(learner, sampler, mask)
    assert s["tokens"] == 5 and math.isclose(s["gap_sum"], 0.5 + 0 + 2.0 + 0 + 0.3, rel_tol=1e-6)
    assert math.isclose(s["gap_max"], 2.0)
    d = torch.tensor([0.5, 0.0, -2.0, 0.0, -0.3])
    assert math.isclose(s["kl_sum"], float((d.exp() - 1 - d).sum()), rel_tol=1e-5)


def test_tis_weights_are_ratios_cut_at_the_cap():
    w = tis_weights(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.0, math.log(4.0), -math.log(4.0)]), cap=2.0)
    assert torch.allclose(w, torch.tensor([1.0, 0.25, 2.0]))


def test_gap_watch_warns_once_above_the_dtype_noise():
    watch = GapWatch(torch.bfloat16)
    assert watch.check(1, watch.noise, 0.5) is None
    message = watch.check(2, watch.noise * WARN_FACTOR * 2, 3.0)
    assert message and "step 2" in message and "rollout.engine=hf" in message
    assert watch.check(3, 5.0, 9.0) is None
    assert GapWatch(torch.float32).check(1, None, None) is None
