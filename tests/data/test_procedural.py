"""Procedural problems: the built-in arith task and reasoning-gym generators, offline."""

import pytest

from mathgrpo.data import DataError, load_source
from mathgrpo.data.procedural import SUGGESTED, split_seed
from mathgrpo.data.solutions import sft_text
from mathgrpo.data.formats import PRESETS, parse_completion


def test_arith_splits_are_fixed_and_disjoint():
    """The built-in arith splits keep their sizes, do not overlap, and reject unknown splits."""
    splits = {s: load_source(f"procedural:arith@{s}").problems for s in ("train", "dev", "test")}
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [15050 - 400, 200, 200]
    ids = [{p.id for p in problems} for problems in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert [p.id for p in load_source("procedural:arith", split="test").problems] == [p.id for p in splits["test"]]
    with pytest.raises(DataError, match="procedural:arith has splits train, dev, test"):
        load_source("procedural:arith", split="validation")


def test_arith_limit_is_a_seeded_subset():
    """limit on arith draws the same subset for the same seed and another for another seed."""
    a = load_source("procedural:arith", limit=10, seed=3).problems
    assert [p.id for p in a] == [p.id for p in load_source("procedural:arith", limit=10, seed=3).problems]
    assert [p.id for p in a] != [p.id for p in load_source("procedural:arith", limit=10, seed=4).problems]


@pytest.mark.parametrize("name", SUGGESTED)
def test_each_suggested_generator_works_offline(name):
    """Each suggested reasoning-gym generator builds problems offline, ids and meta filled."""
    report = load_source(f"procedural:{name}", size=20, seed=1)
    assert len(report.problems) == 20 and report.bad_rows == []
    first = report.problems[0]
    assert first.id == f"{name}-train-s1-0" and first.source == f"procedural:{name}@train"
    assert first.question and first.answer
    assert first.meta["source_dataset"] == name


def test_splits_differ_and_seeds_reproduce():
    """train/dev/test are different draws; the same seed gives the same problems."""
    train = [p.question for p in load_source("procedural:chain_sum", size=30, seed=5).problems]
    again = [p.question for p in load_source("procedural:chain_sum", size=30, seed=5).problems]
    test = [p.question for p in load_source("procedural:chain_sum@test", size=30, seed=5).problems]
    dev = [p.question for p in load_source("procedural:chain_sum", split="dev", size=30, seed=5).problems]
    other = [p.question for p in load_source("procedural:chain_sum", size=30, seed=6).problems]
    assert train == again
    assert train != test and test != dev and train != other
    assert split_seed("train", 5) == 5 and split_seed("test", 5) != split_seed("dev", 5)


def test_gsm_symbolic_carries_a_worked_solution():
    """gsm_symbolic's answer_cot becomes a solution whose warm-up text parses back."""
    problem = load_source("procedural:gsm_symbolic", size=3).problems[0]
    assert problem.solution and "####" not in problem.solution
    fmt = PRESETS["reasoning"]
    parsed = parse_completion(sft_text(problem, fmt), fmt)
    assert parsed.well_formed and parsed.answer == problem.answer


def test_bad_names_splits_and_sizes():
    """Unknown generators (with a suggestion), splits and sizes are clear errors."""
    with pytest.raises(DataError, match="procedural:basic_arith: no such reasoning-gym generator; did you mean basic_arithmetic"):
        load_source("procedural:basic_arith")
    with pytest.raises(DataError, match="procedural:chain_sum has splits train, dev, test"):
        load_source("procedural:chain_sum", split="validation")
    with pytest.raises(DataError, match="size=0 must be at least 1"):
        load_source("procedural:chain_sum", size=0)
