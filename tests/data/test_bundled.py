"""Bundled GSM8K and MATH-500: counts, gold answers, worked solutions, ids, splits, subsets."""

import pytest

from mathgrpo.data import DataError, load_source, take_subset
from mathgrpo.data.solutions import sft_text
from mathgrpo.data.formats import PRESETS, parse_completion


@pytest.mark.parametrize("spec, split, count", [("gsm8k", "train", 7473), ("gsm8k", "test", 1319), ("math500", "test", 500)])
def test_counts_and_no_bad_rows(spec, split, count):
    """The bundled splits have their published sizes, no bad rows and unique ids."""
    report = load_source(spec, split=split)
    assert len(report.problems) == count
    assert report.bad_rows == []
    assert len({p.id for p in report.problems}) == count


def test_gsm8k_gold_and_solution():
    """GSM8K gold, cleaned solution, ids by 0-based row and the source name."""
    problems = load_source("gsm8k", split="test").problems
    first = problems[0]
    assert first.id == "gsm8k-test-0"
    assert first.answer == "18"
    assert first.solution == ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
                              "She makes 9 * 2 = $18 every day at the farmer\u2019s market.")
    assert problems[17].id == "gsm8k-test-17" and problems[17].answer == "57500"
    assert first.source == "gsm8k@test"


def test_gsm8k_gold_has_commas_removed():
    """No gold keeps a comma or `####`; no solution keeps a calculator note."""
    train = load_source("gsm8k", split="train").problems
    assert train[345].answer == "1080"  # `#### 1,080` on line 346
    assert all("," not in p.answer and "####" not in p.answer for p in train)
    assert all("<<" not in p.solution for p in train)


def test_math500_fields_and_ids():
    """MATH-500 gold from `answer`, meta, unique_id ids, solution with its box unwrapped."""
    first = load_source("math500", split="test").problems[0]
    assert first.id == "math500-test/precalculus/807.json"
    assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.meta == {"subject": "Precalculus", "level": 2, "unique_id": "test/precalculus/807.json"}
    # The \boxed{} of the last sentence is unwrapped: the reasoning keeps its words, the format adds the answer.
    assert "\\boxed" not in first.solution
    assert first.solution.endswith("the polar coordinates are $\\left( 3, \\frac{\\pi}{2} \\right).$")


def test_math500_train_split_is_a_clear_error():
    """math500 train is an error saying only test exists."""
    with pytest.raises(DataError, match=r"math500 has split test only \(not 'train'\); name the split in the source: math500@test"):
        load_source("math500", split="train")


def test_split_in_spec_overrides_argument():
    """`name@split` picks the split; an unknown one is an error."""
    assert load_source("gsm8k@test").problems[0].id == "gsm8k-test-0"
    with pytest.raises(DataError, match="gsm8k has split train and test only"):
        load_source("gsm8k@dev")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_bundled_warm_up_text_parses_back_to_its_gold(preset):
    """Every bundled problem's warm-up text parses back, well formed, to its gold."""
    fmt = PRESETS[preset]
    problems = load_source("gsm8k", split="test").problems + load_source("math500", split="test").problems
    for problem in problems:
        text = sft_text(problem, fmt)
        assert text is not None, problem.id
        parsed = parse_completion(text, fmt)
        assert parsed.well_formed, (problem.id, text[-200:])
        assert parsed.answer == problem.answer.strip(), problem.id


def test_limit_is_a_seeded_deterministic_subset():
    """limit shuffles with the seed and keeps a prefix: same seed same subset, smaller limits nest."""
    full = load_source("gsm8k", split="test").problems
    a = [p.id for p in load_source("gsm8k", split="test", limit=50, seed=1).problems]
    b = [p.id for p in load_source("gsm8k", split="test", limit=50, seed=1).problems]
    c = [p.id for p in load_source("gsm8k", split="test", limit=50, seed=2).problems]
    assert a == b and len(a) == 50 and a != c
    assert a != [p.id for p in full[:50]]
    assert [p.id for p in take_subset(full, 20, seed=1)] == a[:20]
    assert load_source("gsm8k", split="test", limit=0).problems == []
    with pytest.raises(DataError, match="limit=-1 must be >= 0"):
        load_source("gsm8k", split="test", limit=-1)


def test_unknown_source_names_the_choices():
    """An unknown source name lists the kinds of source there are."""
    with pytest.raises(DataError, match="unknown data source 'gsm9k'.*gsm8k, math500, hub:<id>"):
        load_source("gsm9k")
