"""The judge: literal equivalence cases, every bundled gold against itself and its own solution,
hostile inputs under a hard time limit (also off the main thread) and extraction."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from mathgrpo.grading import judge
from mathgrpo.data import Problem
from mathgrpo.data.formats import get_format, last_boxed

BUNDLED = Path(__file__).resolve().parents[2] / "src" / "mathgrpo" / "data" / "bundled"
HOSTILE_LIMIT_S = 1.0
SLACK_S = 0.75  # pipe round trip, killing the overrunning worker, forking the next one


@pytest.fixture(scope="module", autouse=True)
def workers():
    """Two warm math-verify workers for the whole module (the start-up is not part of any check)."""
    judge.warm_up(2)
    yield


EQUIVALENT = [
    # numbers: thousands commas, currency, trailing zeros, percent, units
    ("1,000", "1000"), ("1,234,567.5", "1234567.5"), ("$18", "18"), ("\\$18", "18"), ("18 dollars", "18"),
    ("18.0", "18"), ("18.00", "18"), ("-3", "-3.0"), ("50%", "50"), ("50\\%", "50"), ("18 eggs", "18"),
    ("5 cm", "5"), ("5\\text{ cm}", "5"), ("30^\\circ", "30"), ("30^{\\circ}", "30"), ("30 degrees", "30"),
    ("12\\text{ inches}^2", "12"), ("1{,}000", "1000"), ("0.50", ".5"),
    # LaTeX: fractions, radicals, pi, tuples, intervals, sets, expressions, assignments
    ("\\frac{1}{2}", "0.5"), ("\\dfrac{1}{2}", "\\frac12"), ("1/2", "\\tfrac{1}{2}"), ("\\frac{3}{4}", "0.75"),
    ("\\sqrt{2}", "\\sqrt2"), ("2\\sqrt{2}", "\\sqrt{8}"), ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}"),
    ("2\\pi", "\\pi \\cdot 2"), ("\\frac{\\pi}{2}", "\\dfrac{\\pi}{2}"), ("(1,2)", "(1, 2)"),
    ("\\left(3, \\frac{\\pi}{2}\\right)", "(3,\\frac{\\pi}{2})"), ("[0,1)", "[0, 1)"), ("\\{1,2\\}", "\\{2,1\\}"),
    ("x^2+2x+1", "(x+1)^2"), ("x = 3", "3"), ("y=\\frac{1}{2}", "0.5"), ("\\boxed{7}", "7"), ("$7$", "7"),
    ("(-\\infty, 3]", "(-\\infty,3]"), ("2^{10}", "1024"),
    # plain text and multiple choice
    ("Evelyn", "\\text{Evelyn}"), ("evelyn", "Evelyn"), ("  Monday ", "\\text{Monday}"), ("(A)", "A"),
    ("A", "\\text{(A)}"), ("\\text{(C)}", "C"), ("(b)", "B"),
]

NOT_EQUIVALENT = [
    ("1,001", "1000"), ("$19", "18"), ("18.01", "18"), ("51%", "50"), ("19 eggs", "18"), ("-18", "18"),
    ("\\frac{1}{3}", "0.5"), ("1/3", "\\frac{1}{2}"), ("\\sqrt{3}", "\\sqrt{2}"), ("3\\pi", "2\\pi"),
    ("(1,2)", "(2,1)"), ("[0,1)", "[0,1]"), ("(0,1)", "[0,1]"), ("\\{1,2\\}", "\\{1,3\\}"),
    ("x^2+2x+2", "(x+1)^2"), ("x = 4", "3"), ("Evelyn", "Emily"), ("(A)", "B"), ("\\text{(C)}", "D"),
    ("2 pi", "2"), ("", "3"), ("3", ""), ("1000", "1,000,000"),
]


# The kinds of failure issue 18 lists (gold | prediction), each with a near miss that must stay apart.
ISSUE_18_EQUIVALENT = [
    ("\\begin{pmatrix}0&0&0\\\\0&1&0\\\\0&0&1\\end{pmatrix}", "\\begin{bmatrix} 0 & 0 & 0 \\\\ 0 & 1 & 0 \\\\ 0 & 0 & 1\\end{bmatrix}"),
    ("\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}", "\\begin{pmatrix}-2\\\\-14\\\\-7\\end{pmatrix}"),
    ("16386.20", "\\$16,\\!386.20"), ("10,\\!080", "10080"), ("10,\\!080", "10,080"), ("1\\,000", "1000"),
    ("-12;-11;-10;-8;-7;-6", "\\{-12, -11, -10, -8, -7, -6\\}"), ("1; 2", "1, 2"),
    ("\\frac{1}{12}", "0.0833333333333333"), ("\\frac{2}{3}", "0.666666666666667"), ("\\frac{1}{7}", "0.142857"),
    ("10\\%", "0.1"), ("10\\%", "10"), ("28\\%", "28 percent"), ("1.5", "1 1/2"), ("-2.25", "-2 1/4"),
    ("2x+4y-3=0", "y=-\\frac{1}{2}x+\\frac{3}{4}"), ("√2", "\\sqrt{2}"), ("2√3", "2\\sqrt{3}"), ("√(x+1)", "\\sqrt{x+1}"),
    ("2π", "2\\pi"),
]
ISSUE_18_DIFFERENT = [
    ("\\begin{pmatrix}0&0&0\\\\0&1&0\\\\0&0&1\\end{pmatrix}", "\\begin{bmatrix} 0 & 0 & 0 \\\\ 0 & 1 & 0 \\\\ 0 & 0 & 2\\end{bmatrix}"),
    ("\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}", "\\begin{pmatrix}-2 & -14 & -6\\end{pmatrix}"),
    ("16386.20", "\\$16,\\!386.21"), ("10,\\!080", "10,081"), ("-12;-11;-10", "\\{-12, -11, -9\\}"),
    ("\\frac{1}{12}", "0.0834"), ("10\\%", "0.2"), ("10\\%", "11"), ("1.5", "11/2"), ("1 1/2", "11/2"),
    ("2x+4y-3=0", "y=-\\frac{1}{2}x+\\frac{1}{4}"), ("√2", "\\sqrt{3}"),
    ("52_8", "52_9"), ("4210_{5}", "4210_{6}"), ("1,22", "1.23"), ("a_{11}", "a_{12}"),
]


@pytest.mark.parametrize(
    "gold,pred",
    [("52_8", "52_{8}"), ("1,22", "1.22"), ("12", "The answer is $\\boxed{12}$."), ("$x < 3$", "We find that $x \\lt 3$."),
     ("90^\\circ", "Thus \\begin{align*} x &= 50^\\circ+40^\\circ \\\\ &= \\boxed{90^\\circ}. \\end{align*}"),
     ("189", "So " + "we count again. " * 80 + "Therefore, the answer is $189$.")],
)
def test_numerals_decimal_commas_and_text_answers(gold, pred):
    """A numeral in a base equals itself; `1,22` is the decimal 1.22; a sentence or a long solution
    (math delimiters, a box, over 1,000 characters) is read the way plain math-verify reads it."""
    assert judge.is_equivalent(pred, gold)


@pytest.mark.parametrize("gold,pred", ISSUE_18_EQUIVALENT)
def test_issue_18_kinds_are_equivalent(gold, pred):
    """Matrices with `\\\\` row breaks, `,\\!` thousands, `;` lists, decimals of fractions, percent
    (p% means p or p/100), mixed numbers, equations, `√`: equal both ways."""
    assert judge.is_equivalent(pred, gold)
    assert judge.is_equivalent(gold, pred)


@pytest.mark.parametrize("gold,pred", ISSUE_18_DIFFERENT)
def test_issue_18_near_misses_stay_apart(gold, pred):
    """The same spellings with a different value (or base) are not equal."""
    assert not judge.is_equivalent(pred, gold)


@pytest.mark.parametrize(
    "pred,gold",
    [("(1,2)", "(2,1)"), ("x+1", "x+2"), ("\\frac{\\pi}{2}", "\\frac{\\pi}{3}"), ("0.1428", "\\frac{1}{7}"), ("1.5", "1.6")],
)
def test_not_equal_comes_from_math_verify_unless_both_are_exact_numbers(pred, gold):
    """A cheap path says "equal" only; "not equal" is math-verify's, except integers and fractions
    compared exactly (a decimal that differs goes to math-verify, which rounds to 6 places)."""
    assert judge.decide(pred, gold).path == "math-verify"
    assert judge.decide("3/4", "\\frac{2}{3}") == judge.Decision(False, "number", "3/4", "2/3")
    assert judge.decide("0.0833333333333333", "\\frac{1}{12}").path == "number"


@pytest.mark.parametrize("pred,gold", EQUIVALENT)
def test_equivalent_literals(pred, gold):
    """Each of the 46 literal pairs means the same answer (and does so in both directions)."""
    assert judge.is_equivalent(pred, gold)
    assert judge.is_equivalent(gold, pred)


@pytest.mark.parametrize("pred,gold", NOT_EQUIVALENT)
def test_not_equivalent_literals(pred, gold):
    """Each of the 23 literal pairs is a different answer."""
    assert not judge.is_equivalent(pred, gold)


@pytest.mark.parametrize("pred,gold", [(None, "3"), (5, "5"), ("5", 5), ("5", None), (b"5", "5")])
def test_wrong_argument_types_raise_type_error(pred, gold):
    """Answers that are not str (None, numbers, bytes) raise TypeError instead of a verdict."""
    with pytest.raises(TypeError, match="must be a str"):
        judge.is_equivalent(pred, gold)


def test_bad_time_limit_raises():
    """A time limit that is not a positive number is refused."""
    with pytest.raises(TypeError):
        judge.is_equivalent("1", "1", timeout="3")
    with pytest.raises(ValueError):
        judge.is_equivalent("1", "1", timeout=0)


def test_integer_answers_take_the_fast_path():
    """Integer answers (the default tiny task) are decided without the worker."""
    judge.reset_stats()
    assert judge.is_equivalent("85", "85") and not judge.is_equivalent("84", "85")
    assert judge.is_equivalent("085", "85")
    assert judge.stats.math_verify == 0 and judge.stats.checks == 3


def _gsm8k_pairs() -> list:
    """(raw text after the last ####, gold with commas removed) for every GSM8K test row (1,319)."""
    pairs = []
    for line in (BUNDLED / "gsm8k_test.jsonl").read_text().splitlines():
        raw = json.loads(line)["answer"].split("####")[-1].strip()
        pairs.append((raw, raw.replace(",", "")))
    return pairs


def _math500_pairs() -> list:
    """(last \\boxed{} of the solution, answer field) for every MATH-500 row (500)."""
    pairs = []
    for line in (BUNDLED / "math500_test.jsonl").read_text().splitlines():
        row = json.loads(line)
        pairs.append((last_boxed(row["solution"]), row["answer"]))
    return pairs


def _bump_first_integer(text: str) -> str:
    """`text` with its first integer increased by one (unchanged when it has none)."""
    return re.sub(r"\d+", lambda m: str(int(m.group()) + 1), text, count=1)


def test_every_gold_equals_itself_and_its_own_solution():
    """All 1,819 golds (1,319 GSM8K + 500 MATH-500) equal themselves and their worked solution's answer."""
    pairs = _gsm8k_pairs() + _math500_pairs()
    assert len(pairs) == 1819
    failed = [(s, g) for s, g in pairs if not (judge.is_equivalent(g, g) and judge.is_equivalent(s, g))]
    assert failed == []


def test_changed_golds_are_not_equivalent():
    """Every gold with a number (about 1,808 of 1,819) stops matching once its first integer is bumped."""
    golds = [g for _, g in _gsm8k_pairs() + _math500_pairs()]
    changed = [(_bump_first_integer(g), g) for g in golds if _bump_first_integer(g) != g]
    assert len(changed) > 1800
    assert [(c, g) for c, g in changed if judge.is_equivalent(c, g)] == []


# --- hostile input ---------------------------------------------------------------------------------


def _grading_check():
    """benchmarks/grading_check.py as a module: the test asserts on the numbers the script prints."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "grading_check.py"
    spec = importlib.util.spec_from_file_location("grading_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.exclusive
def test_hostile_inputs_neither_raise_nor_overrun():
    """1,000 seeded hostile predictions, graded from two non-main threads: no exception, each check
    within its 1.0 s limit + 0.75 s slack; at least one really hit the limit and was killed."""
    gc = _grading_check()
    result = gc.hostile_check(limit=HOSTILE_LIMIT_S, n=1000, seed=0, threads=2)
    print(f"\nhostile: worst {result['worst_s']:.3f} s, total {result['total_s']:.1f} s, {result['timeouts']} timeouts")
    assert result["n"] == 1000 and result["exceptions"] == []
    assert result["worst_s"] <= HOSTILE_LIMIT_S + SLACK_S
    assert result["timeouts"] > 0


@pytest.mark.exclusive
@pytest.mark.parametrize("pred", ["(10^{6})!", "(10^{8})!", "\\sum_{k=1}^{10^{4}} k^{k}"])
def test_time_limit_holds_off_the_main_thread(pred):
    """A check that would run for minutes in sympy ends within 0.5 s + slack when run from a
    threading.Thread (where math-verify's own signal timeout cannot work), and counts as a timeout."""
    out = {}

    def run():
        t0 = time.monotonic()
        out["equal"] = judge.is_equivalent(pred, "3", timeout=0.5)
        out["seconds"] = time.monotonic() - t0

    judge.reset_stats()
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert out["equal"] is False and out["seconds"] <= 0.5 + SLACK_S
    assert judge.stats.timeouts == 1


def test_worker_recovers_after_a_timeout():
    """After a killed check the next one still gets a real math-verify answer."""
    assert not judge.is_equivalent("(10^{6})!", "3", timeout=0.3)
    assert judge.is_equivalent("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}")


@pytest.mark.parametrize(
    "text,reason",
    [("10^{10^{10^{10}}}", "tower"), ("2^{100000}", "exponent"), ("1000000!", "factorial"), ("{" * 30 + "1" + "}" * 30, "nesting")],
)
def test_guards_stop_numbers_sympy_would_build(text, reason):
    """Each of the 4 guard kinds names its reason; a plain exponent like 2^{10} passes."""
    assert reason in judge.hostile_reason(text)
    assert judge.hostile_reason("2^{10}") is None


# --- extraction, grade ----------------------------------------------------------------------------


def test_extract_answer_per_format():
    """The answer comes from the format's marker; without one there is none (no guessing from free
    text), except the boxed preset, which reads the last \\boxed{}."""
    assert judge.extract_answer("[REASONING]8+7=15[ANSWER]85", "reasoning") == "85"
    assert judge.extract_answer("the answer is 85", "reasoning") is None
    assert judge.extract_answer("<think>x</think><answer> 12 </answer>", get_format("think")) == "12"
    assert judge.extract_answer("so \\boxed{1} then \\boxed{\\frac{1}{2}}.", "boxed") == "\\frac{1}{2}"
    assert judge.extract_answer("so the answer is 2", "boxed") is None


def test_grade_reads_correctness_and_form():
    """grade() gives the extracted answer, correctness against the gold, well-formedness and the rule that decided."""
    problem = Problem(id="p1", question="What is half of 1?", answer="\\frac{1}{2}", source="test")
    fmt = get_format("unsloth")
    good = "<start_working_out>1/2<end_working_out><SOLUTION>0.5</SOLUTION>"
    assert judge.grade(good, problem, fmt) == judge.Verdict(answer="0.5", correct=True, well_formed=True, rule="number")
    sloppy = "1/2 <SOLUTION>0.5</SOLUTION> and more"
    assert judge.grade(sloppy, problem, fmt) == judge.Verdict(answer="0.5", correct=True, well_formed=False, rule="number")
    wrong = "<start_working_out>x<end_working_out><SOLUTION>0.25</SOLUTION>"
    assert judge.grade(wrong, problem, "unsloth") == judge.Verdict(answer="0.25", correct=False, well_formed=True, rule="math-verify")
    assert judge.grade("no answer", problem, fmt) == judge.Verdict(answer=None, correct=False, well_formed=False)


# --- labelled pairs: never below plain math-verify ---------------------------------------------------


@pytest.mark.exclusive  # a check that hits its time limit on a starved machine counts as a disagreement
def test_labelled_pairs_agree_at_least_as_often_as_plain_math_verify():
    """On tests/data/grading_pairs.jsonl (both splits; pairs from math-verify's and the MATH
    repository's tests, and re-spelled bundled golds), mathgrpo agrees with the labels at least as
    often as plain math-verify (verify(parse(gold), parse(pred)), default settings), overall and on
    every source."""
    gc = _grading_check()
    result = gc.agreement(gc.load_pairs())
    gc.print_agreement("tune+test", result)
    assert result["by_source"]["all"]["n"] > 2000
    for source, entry in result["by_source"].items():
        assert entry["mathgrpo"] >= entry["math_verify"], source


@pytest.mark.parametrize("pred, gold, equal", [
    # repeating decimals as public teaching material writes them, with the value it gives each
    ("8.\\overline{3}", "8\\frac{1}{3}", True), ("3.\\overline{3}", "\\frac{10}{3}", True),
    ("\\frac{1}{21}", "0.\\overline{047619}", True), ("83.\\overline{3}", "\\frac{250}{3}", True),
    ("0.\\overline{142857}", "\\frac17", True), ("\\boxed{0.\\overline{5}}", "\\frac{5}{9}", True),
    ("\\frac{121}{909}", "0.\\overline{1331}", True),  # MATH-500's 0.\\overline{1331} = a/b
    ("0.333333", "0.\\overline{3}", True),  # six digits: the approximation rule, as 0.33333 = 1/3
    # what math-verify reads as the integer part (0.\\overline{3} as 0) was equal to it, and to other such decimals
    ("0", "0.\\overline{3}", False), ("0.\\overline{6}", "0.\\overline{3}", False), ("1", "1.\\overline{3}", False),
    ("83.3", "83.\\overline{3}", False), ("0.33", "0.\\overline{3}", False),
])
def test_repeating_decimals_compare_by_their_value(pred, gold, equal):
    """A repeating decimal is the exact fraction it writes: equal to it, and to nothing else."""
    assert judge.decide(pred, gold).equal is equal
