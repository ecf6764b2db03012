"""Rewards on literal completions: each part, both presets' totals (computed by hand), the combiner."""

from __future__ import annotations

import pytest

from mathgrpo.grading import rewards
from mathgrpo.data import Problem
from mathgrpo.data.formats import get_format
from mathgrpo.grading.rewards import RewardContext, build_rewards

EGGS = Problem(id="g1", question="How many dollars?", answer="18", source="test")
HALF = Problem(id="m1", question="Half of 1?", answer="\\frac{1}{2}", source="test")


def ctx(preset: str = "reasoning", tokens: int = 10, max_new: int = 100, buffer: int = 20) -> RewardContext:
    """A reward context for format `preset` and a completion of `tokens` tokens."""
    return RewardContext(get_format(preset), max_new, tokens, tokens >= max_new, buffer)


def part(name: str, completion: str, problem: Problem = EGGS, context: RewardContext = None) -> float:
    """One registered reward on one completion."""
    return rewards.REGISTRY[name](completion, problem, context or ctx())


@pytest.mark.parametrize(
    "completion,correct,exact,soft",
    [
        ("[REASONING]16-3-4=9, 9*2=18[ANSWER]18", 1.0, 1.0, 1.0),
        ("[REASONING]9*2=18[ANSWER]$18 dollars", 1.0, 1.0, 1.0),
        ("[ANSWER]20", 0.0, 0.0, 0.5),
        ("The answer is 18", 0.0, 0.0, 0.0),
        ("[REASONING]a[REASONING]b[ANSWER]18", 1.0, 0.0, 0.5),
    ],
)
def test_correct_and_format_parts(completion, correct, exact, soft):
    """correct / format_exact / format_soft on the 5 literal completions (gold 18, [REASONING]/[ANSWER])."""
    assert part("correct", completion) == correct
    assert part("format_exact", completion) == exact
    assert part("format_soft", completion) == soft


def test_correct_goes_through_the_latex_judge():
    """`correct` accepts 0.5 for \\frac{1}{2} (math-verify's equivalence, not string match)."""
    assert part("correct", "[REASONING]1/2[ANSWER]0.5", HALF) == 1.0
    assert part("correct", "[REASONING]1/3[ANSWER]\\frac{1}{3}", HALF) == 0.0


def test_format_soft_for_think_and_boxed():
    """format_soft counts 4 tags for think (3 of 4 here: 0.75) and \\boxed{ alone for boxed."""
    think = "<think>x</think><answer>18"
    assert part("format_soft", think, context=ctx("think")) == 0.75
    assert part("format_soft", "so \\boxed{18}", context=ctx("boxed")) == 1.0
    assert part("format_soft", "\\boxed{1} \\boxed{18}", context=ctx("boxed")) == 0.0


@pytest.mark.parametrize(
    "completion,problem,expected",
    [
        ("[REASONING]x[ANSWER]18", EGGS, 1.0),
        ("[REASONING]x[ANSWER]20", EGGS, 1 - 2 / 18),
        ("[REASONING]x[ANSWER]$1,8", EGGS, 0.0),  # "1,8" is not a number
        ("[REASONING]x[ANSWER]100", EGGS, 0.0),  # relative error above 1 is floored
        ("[REASONING]x[ANSWER]0.25", HALF, 0.5),
        ("[REASONING]x[ANSWER]x+1", EGGS, 0.0),
        ("no answer", EGGS, 0.0),
    ],
)
def test_numeric_close(completion, problem, expected):
    """numeric_close = 1 - relative error for 7 literal answers; 0 when a side is not a number."""
    assert part("numeric_close", completion, problem) == pytest.approx(expected)


@pytest.mark.parametrize("tokens,buffer,expected", [(50, 20, 0.0), (80, 20, 0.0), (90, 20, -0.5), (100, 20, -1.0), (100, 0, 0.0)])
def test_overlong(tokens, buffer, expected):
    """overlong with max_new_tokens 100: 0 up to 100-buffer, -0.5 halfway, -1 at the limit, off at buffer 0."""
    assert part("overlong", "x", context=ctx(tokens=tokens, buffer=buffer)) == expected


U = ("<start_working_out>", "<end_working_out>", "<SOLUTION>", "</SOLUTION>")


def unsloth(answer: str, reasoning: str = "9*2=18") -> str:
    """A well-formed completion in the unsloth format."""
    return f"{U[0]}{reasoning}{U[1]}{U[2]}{answer}{U[3]}"


@pytest.mark.parametrize(
    "completion,fmt_exact,approx,answer,numbers",
    [
        (unsloth("18"), 3.0, 2.0, 5.0, 3.5),
        (unsloth("19"), 3.0, 2.0, 2.0, -1.5),  # ratio 1.056
        ("<SOLUTION>15</SOLUTION>", 0.0, -1.0, 1.5, -1.5),  # ratio 0.833; two tags missing
        (unsloth("30"), 3.0, 2.0, -2.5, -1.5),  # ratio 1.67
        (unsloth("eighteen"), 3.0, 2.0, -4.5, -2.5),
        (unsloth("It is 18 eggs"), 3.0, 2.0, -4.5, 3.5),  # the first number is right
        (unsloth("1,000"), 3.0, 2.0, -4.5, -1.5),
        ("no tags here 18", 0.0, -4.0, -2.0, -2.5),
    ],
)
def test_unsloth_parts(completion, fmt_exact, approx, answer, numbers):
    """The 4 unsloth parts on 8 literal completions (gold 18), at the notebook's scale."""
    c = ctx("unsloth")
    assert part("unsloth_format_exact", completion, context=c) == fmt_exact
    assert part("unsloth_format_approx", completion, context=c) == approx
    assert part("unsloth_answer", completion, context=c) == answer
    assert part("unsloth_numbers", completion, context=c) == numbers


def test_unsloth_answer_stripped_tier_and_non_numeric_gold():
    """A gold with stray spaces gets the stripped tier (+3.5); a LaTeX gold makes unsloth_numbers 0."""
    spaced = Problem(id="s", question="q", answer="18 ", source="test")
    assert part("unsloth_answer", unsloth("18"), spaced, ctx("unsloth")) == 3.5
    assert part("unsloth_numbers", unsloth("0.5"), HALF, ctx("unsloth")) == 0.0


def test_default_preset_totals():
    """default = correct + 0.1 * format_exact: 1.1, 1.0, 0.1, 0.0 for these 4 completions."""
    r = build_rewards("default")
    assert r.names == ["correct", "format_exact"] and r.weights == {"correct": 1.0, "format_exact": 0.1}
    completions = ["[REASONING]x[ANSWER]18", "[ANSWER]18", "[REASONING]x[ANSWER]17", "18"]
    totals, parts = r(completions, [EGGS] * 4, [ctx()] * 4)
    assert totals == pytest.approx([1.1, 1.0, 0.1, 0.0])
    assert parts == {"correct": [1.0, 1.0, 0.0, 0.0], "format_exact": [1.0, 0.0, 1.0, 0.0]}


def test_unsloth_preset_totals():
    """unsloth preset sums its 4 parts unweighted: 13.5, 5.5, -1.0 and -8.5 by hand."""
    r = build_rewards("unsloth")
    completions = [unsloth("18"), unsloth("19"), "<SOLUTION>15</SOLUTION>", "no tags here 18"]
    totals, parts = r(completions, [EGGS] * 4, [ctx("unsloth")] * 4)
    assert totals == pytest.approx([13.5, 5.5, -1.0, -8.5])
    assert parts["unsloth_answer"] == [5.0, 2.0, 1.5, -2.0]


def test_overrides_add_drop_and_reweight():
    """A new name adds a part, weight 0 drops one (not computed at all), a number reweights."""
    r = build_rewards("default", {"format_exact": 0, "overlong": 1.0, "correct": 2.0})
    assert r.names == ["correct", "overlong"] and r.weights == {"correct": 2.0, "overlong": 1.0}
    totals, parts = r(["[REASONING]x[ANSWER]18"], [EGGS], [ctx(tokens=90)])
    assert set(parts) == {"correct", "overlong"} and totals == [pytest.approx(1.5)]


def test_unknown_names_are_refused_with_the_known_ones():
    """An unknown reward name or preset raises ValueError naming it and listing the choices."""
    with pytest.raises(ValueError, match="'corect'.*correct, format_exact"):
        build_rewards("default", {"corect": 1.0})
    with pytest.raises(ValueError, match="'dapo'.*default, unsloth"):
        build_rewards("dapo")


def test_batch_lists_must_line_up():
    """Completions, problems and contexts of different lengths are an error, not a silent zip."""
    with pytest.raises(ValueError, match="2 completions, 1 problems"):
        build_rewards("default")(["a", "b"], [EGGS], [ctx(), ctx()])
