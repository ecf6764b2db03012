"""Seeded per-sequence sampling: the right distribution, filters, and independence from batching."""

import math

import pytest
import torch

from mathgrpo.rollout import sequence_seed
from mathgrpo.rollout.base import SamplingParams
from mathgrpo.rollout.seeded import SeededSampler, filtered_logprobs

LOGITS = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])


def _frequencies(params, draws=20000):
    sampler = SeededSampler([sequence_seed(7, i) for i in range(draws)], torch.device("cpu"))
    tokens = sampler.pick(LOGITS.expand(draws, -1), params)
    return torch.bincount(tokens, minlength=LOGITS.shape[1]).float() / draws, sampler


@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=3),
     SamplingParams(temperature=1.3, top_p=0.8), SamplingParams(temperature=1.0, min_p=0.1)],
)
def test_frequencies_match_filtered_distribution(params):
    """20,000 draws land within 4 standard errors of the filtered softmax, never on filtered tokens."""
    want = filtered_logprobs(LOGITS, params).exp()[0]
    got, _ = _frequencies(params)
    se = (want * (1 - want) / 20000).sqrt()
    assert torch.all((got - want).abs() <= 4 * se + 1e-9), (got, want)
    assert torch.all(got[want == 0] == 0)


def test_filters_by_hand():
    """top_k=2 keeps two tokens; min_p=0.3 drops tokens under 0.3 x the top probability."""
    p = filtered_logprobs(LOGITS, SamplingParams(top_k=2)).exp()[0]
    assert (p > 0).sum() == 2 and p[0] == pytest.approx(math.e / (math.e + 1))
    base = torch.softmax(LOGITS[0], -1)
    kept = filtered_logprobs(LOGITS, SamplingParams(min_p=0.3)).exp()[0] > 0
    assert kept.tolist() == (base >= 0.3 * base.max()).tolist()


def test_chosen_logprobs_are_those_of_the_sampled_tokens():
    """The recorded log-prob of each draw is the filtered log-prob of the token drawn."""
    params = SamplingParams(temperature=0.8, top_p=0.9)
    sampler = SeededSampler([1, 2, 3, 4], torch.device("cpu"))
    tokens = sampler.pick(LOGITS.expand(4, -1), params)
    assert torch.allclose(sampler.chosen_logprobs[0], filtered_logprobs(LOGITS, params)[0, tokens])


def test_a_sequence_samples_the_same_alone_or_in_a_batch():
    """Row i's draw depends on its seed only, not on its neighbours."""
    logits = torch.randn(5, 50)
    params = SamplingParams(temperature=1.0)
    seeds = [sequence_seed(0, i) for i in range(5)]
    together = SeededSampler(seeds, torch.device("cpu")).pick(logits, params)
    alone = [SeededSampler([s], torch.device("cpu")).pick(logits[i : i + 1], params).item() for i, s in enumerate(seeds)]
    assert together.tolist() == alone
