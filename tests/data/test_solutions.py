"""Worked solutions: GSM8K gold parsing, markup clean-up, the warm-up text in each format."""

import pytest

from mathgrpo.data import Problem
from mathgrpo.data.solutions import (GoldError, clean_solution, sft_text, split_gsm8k, strip_calculator, strip_drawings,
                                     unwrap_boxed)
from mathgrpo.data.formats import PRESETS, parse_completion


def test_split_gsm8k_takes_the_last_marker_and_removes_commas():
    """GSM8K gold is after the last `####`, commas removed; missing or empty gold raises."""
    assert split_gsm8k("2+1=<<2+1=3>>3 bolts\n#### 1,003 ") == ("2+1=3 bolts", "1003")
    assert split_gsm8k("a #### b\n#### 7")[1] == "7"
    with pytest.raises(GoldError, match="no '#### <answer>' line"):
        split_gsm8k("The answer is 7")
    with pytest.raises(GoldError, match="nothing after '####'"):
        split_gsm8k("work\n####  ")


def test_calculator_annotations_only():
    """Only `<<expr=value>>` annotations go; other `<<` text stays."""
    assert strip_calculator("x = <<4*5=20>>20 and a << b >> c") == "x = 20 and a << b >> c"


def test_unwrap_boxed_keeps_nested_braces_and_leaves_unbalanced_text():
    """Boxes are unwrapped with nested braces intact; an unbalanced box is left alone."""
    assert unwrap_boxed("so $\\boxed{\\frac{1}{2}}$ and \\fbox{3}.") == "so $\\frac{1}{2}$ and 3."
    assert unwrap_boxed("broken \\boxed{1") == "broken \\boxed{1"


def test_clean_solution_drops_think_tags_and_empty_text():
    """Think tags go; a solution with nothing left becomes None."""
    assert clean_solution("<think>\nWe add.\n</think>\nSo \\boxed{5}.") == "We add.\n\nSo 5."
    assert clean_solution(" <think></think> ") is None
    assert clean_solution(None) is None


def test_asymptote_figures_are_dropped_whole():
    """`[asy]...[/asy]` drawing code goes (several figures, across lines); the words around it stay."""
    text = "We draw it.\n\n[asy]\ndraw((0,0)--(1,1));\n[/asy]\n\nSo the area is 2. See [asy]dot((0,0));[/asy] here.[asy]x[/asy]"
    assert strip_drawings(text) == "We draw it.\n\nSo the area is 2. See here. "
    assert strip_drawings("no figure [asy] unclosed") == "no figure [asy] unclosed"


def test_math500_warm_up_targets_hold_no_drawing_code():
    """Every bundled MATH-500 solution that draws a figure gives a warm-up target without the drawing code."""
    import json
    from pathlib import Path

    from mathgrpo.data import load_source
    from mathgrpo.data import bundled

    raw = Path(bundled.__file__).parent / "bundled" / "math500_test.jsonl"
    drawn = {r["problem"] for r in map(json.loads, raw.read_text().splitlines()) if "[asy]" in r["solution"]}
    problems = [p for p in load_source("math500", split="test").problems if p.question in drawn]
    assert len(problems) == len(drawn) > 50
    targets = [sft_text(p, PRESETS["reasoning"]) for p in problems]
    assert all(t and "[asy]" not in t and "[/asy]" not in t and "draw(" not in t for t in targets)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_sft_text_parses_back_in_every_format(preset):
    """The warm-up text is a well-formed completion with the gold answer in every preset."""
    fmt = PRESETS[preset]
    problem = Problem("p", "1+1?", "2", "test", solution="1+1=2")
    text = sft_text(problem, fmt)
    parsed = parse_completion(text, fmt)
    assert parsed.well_formed and parsed.answer == "2" and parsed.reasoning.startswith("1+1=2")


def test_sft_text_none_without_solution_or_when_the_solution_holds_a_marker():
    """No solution, or one holding the format's markers, gives no warm-up text."""
    fmt = PRESETS["reasoning"]
    assert sft_text(Problem("p", "q", "2", "test"), fmt) is None
    assert sft_text(Problem("p", "q", "2", "test", solution="see [ANSWER] below"), fmt) is None
    assert sft_text(Problem("p", "q", "2", "test", solution="<answer>3</answer>"), PRESETS["think"]) is None
