"""The benchmark estimators against values worked out by hand."""

from math import comb

import pytest

from mathgrpo.evaluation.metrics import (
    accuracy_by,
    group_by_problem,
    maj_at_k,
    majority_vote,
    paired_bootstrap,
    pass_at_k,
    summarise,
    wilson_interval,
)


@pytest.mark.parametrize("k, expected", [(1, 2 / 5), (2, 1 - 3 / 10), (3, 1 - 1 / 10), (4, 1.0), (5, 1.0)])
def test_pass_at_k_n5_c2(k, expected):
    # 1 - C(3,k)/C(5,k): k=1 -> 1-3/5, k=2 -> 1-3/10, k=3 -> 1-1/10; k>3 cannot miss both correct ones.
    assert pass_at_k(5, 2, k) == pytest.approx(expected)


def test_pass_at_k_matches_binomials_on_large_n():
    n, c, k = 200, 7, 10
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), rel=1e-12)


def test_pass_at_k_edges():
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(4, 4, 1) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


ANSWERS = ["18", "17", " 18.", None, "17", "17"]
CORRECT = [True, False, True, False, False, False]


@pytest.mark.parametrize(
    "k, expected",
    [
        (1, True),  # "18" alone
        (2, True),  # 18 vs 17, one each: the tie goes to the earlier answer, 18
        (3, True),  # "18" and " 18." group: 2 votes to 1
        (4, True),  # None does not vote: still 2 to 1
        (5, True),  # 18 (samples 0, 2) vs 17 (samples 1, 4): 2 to 2, the earlier group wins
        (6, False),  # 17 wins 3 to 2
    ],
)
def test_maj_at_k_hand_example(k, expected):
    assert maj_at_k(ANSWERS, CORRECT, k) is expected


def test_majority_vote_with_equivalence_and_no_answers():
    same = lambda a, b: {a, b} <= {"0.5", "1/2"}  # noqa: E731 - a toy equivalence
    assert majority_vote(["3", "0.5", "1/2"], same) == 1
    assert majority_vote(["3", "0.5", "1/2"]) == 0  # no equivalence: three singletons, first wins
    assert majority_vote([None, None]) is None
    assert maj_at_k([None, None], [False, False], 2) is False


def test_wilson_known_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson_interval(0, 0) == (0.0, 0.0)


def test_paired_bootstrap_sign_and_ci():
    a = [0, 0, 0, 1, 1, 0, 0, 0, 1, 0] * 5
    b = [1, 1, 0, 1, 1, 1, 0, 1, 1, 0] * 5
    res = paired_bootstrap(a, b, resamples=2000, seed=0)
    assert res["diff"] == pytest.approx(0.4)
    assert 0 < res["ci"][0] < 0.4 < res["ci"][1] < 1
    assert paired_bootstrap(a, b, seed=0) == res  # seeded: repeatable
    with pytest.raises(ValueError):
        paired_bootstrap([0, 1], [1])


def _rec(pid, sample, correct, answer="1", well_formed=True, length=10, finished=True, meta=None):
    return {
        "id": pid, "sample": sample, "correct": correct, "answer": answer,
        "well_formed": well_formed, "length": length, "finished": finished, "meta": meta or {},
    }


def test_summarise_hand_computed():
    # p1: 2 of 4 correct, answers 7,7,8,7 (7 is right) -> maj@4 right; p2: 0 of 4, no answers.
    recs = [
        _rec("p1", 0, True, "7", length=4), _rec("p1", 1, True, "7", length=6),
        _rec("p1", 2, False, "8", length=8, well_formed=False), _rec("p1", 3, False, "7 ", length=10),
    ]
    recs[3]["correct"] = True  # "7 " is 7: the grader said so
    recs += [_rec("p2", i, False, None, well_formed=False, length=20, finished=False) for i in range(4)]
    out = summarise(recs, ks=[1, 2, 4, 8])
    assert out["problems"] == 2 and out["samples_per_problem"] == 4
    assert out["accuracy"] == pytest.approx((3 / 4 + 0) / 2)
    assert out["pass@k"]["1"] == pytest.approx((3 / 4 + 0) / 2)
    assert out["pass@k"]["2"] == pytest.approx((1 - comb(1, 2) / comb(4, 2) + 0) / 2)
    assert set(out["pass@k"]) == {"1", "2", "4"}  # k=8 > n is left out
    assert out["maj@k"]["4"] == pytest.approx(0.5)
    assert out["format_adherence"] == pytest.approx(3 / 8)
    assert out["answered"] == pytest.approx(4 / 8)
    assert out["truncated"] == pytest.approx(4 / 8)
    assert out["length"]["mean"] == pytest.approx((4 + 6 + 8 + 10 + 80) / 8)
    assert out["length"]["max"] == 20
    assert "by_subject" not in out


def test_summarise_rejects_unfinished_runs():
    with pytest.raises(ValueError, match="different sample counts"):
        summarise([_rec("a", 0, True), _rec("a", 1, True), _rec("b", 0, True)], ks=[1])


def test_accuracy_by_level():
    recs = [
        _rec("a", 0, True, meta={"level": 1}), _rec("b", 0, False, meta={"level": 1}),
        _rec("c", 0, True, meta={"level": 2}), _rec("d", 0, False, meta={}),
    ]
    by = accuracy_by(group_by_problem(recs), lambda r: r["meta"].get("level"))
    assert by["1"]["accuracy"] == 0.5 and by["1"]["problems"] == 2
    assert by["2"]["accuracy"] == 1.0
    assert set(by) == {"1", "2"}


def test_wilson_bounds_hold_the_estimate_at_0_and_100_percent():
    """Every sample size up to 1,000: the interval contains 0% and 100% exactly (no 1e-17 overshoot)."""
    from mathgrpo.evaluation.metrics import accuracy_with_ci

    for n in range(1, 1001):
        for value in (0.0, 1.0):
            m = accuracy_with_ci([value] * n, binary=True)
            assert m["ci"][0] <= m["accuracy"] <= m["ci"][1], (n, value)
            assert 0.0 <= m["ci"][0] and m["ci"][1] <= 1.0
