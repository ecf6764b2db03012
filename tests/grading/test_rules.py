"""The worker's rules after math-verify (`grading/rules.py`), end to end through `judge.decide`:
each kind of answer issue 28 lists, with its near miss, and the rule named in the verdict; the
tolerance never making an exact gold equal to a short decimal; the time limit; rules that fail."""

from __future__ import annotations

import time

import pytest

from mathgrpo.grading import judge, worker

SLACK_S = 0.75


@pytest.fixture(scope="module", autouse=True)
def warm():
    """A warm worker for the module (its start is not part of any check)."""
    judge.warm_up()


# (gold, right answer, near miss, the rule that decides the right answer). Written for these tests:
# none is a row of tests/data/grading_kinds.jsonl.
KINDS = [
    ("\\sqrt{y+2}", "sqrt(y+2)", "sqrt(y-2)", "exact"),
    ("\\ln 5", "log(5)", "log(6)", "identity"),
    ("\\sin^2 t", "sin(t)**2", "sin(t**2)", "exact"),
    ("[2, \\infty)", "[2, inf)", "(2, inf)", "exact"),
    ("y == 3*x + 2", "3*x + 2 == y", "y == 3*x - 2", "equation-scaling"),
    ("3000", "3e3", "3e4", "number"),
    ("4\\times 10^{-6}", "4e-6", "4.2 \\cdot 10^{-6}", "string"),
    ("-0.00027", "-2.7e-4", "2.7e-4", "number"),
    ("\\frac{1}{\\sqrt{2y}}", "\\sqrt{\\frac{1}{2y}}", "\\sqrt{2y}", "identity"),
    ("\\log_3 x + \\log_3 y", "\\log_3(xy)", "\\log_3(x+y)", "identity"),
    ("3x-2=0", "30x-20=0", "3x+2=0", "equation-scaling"),
    ("x=\\frac{2}{3}", "3x-2=0", "3x+2=0", "equation-scaling"),
    ("x^2-9=0", "x=\\pm 3", "x=\\pm 9", "solution-set"),
    ("x>2", "4<2x", "x\\ge 2", "inequality"),
    ("-3x>9", "x<-3", "x>-3", "inequality"),
    ("x^2<9", "-3<x<3", "x<3", "inequality"),
    ("\\frac{\\sqrt{2}}{3}", "0.47140", "0.471", "tolerance"),
    ("\\sqrt{5}", "2.23607", "2.24", "tolerance"),
    ("(0.4, 1.3333]", "(\\frac{2}{5}, \\frac{4}{3}]", "(\\frac{2}{5}, \\frac{3}{4}]", "tolerance"),
    ("\\frac{kQq}{r^2}", "\\frac{k q Q}{r^2}", "\\frac{kqq}{r^2}", "exact"),
    ("\\frac{T-t}{T+t}", "\\frac{-t+T}{t+T}", "\\frac{t-T}{T+t}", "exact"),
    ("x_0 + v t", "vt + x_0", "x_0 + v", "exact"),
    ("\\begin{pmatrix}3\\\\4\\end{pmatrix}", "(3,4)", "(4,3)", "vector"),
    ("\\begin{pmatrix}7\\\\-1\\end{pmatrix}", "\\langle 7, -1\\rangle", "\\langle -7, 1\\rangle", "vector"),
]


@pytest.mark.parametrize("gold,right,near,rule", KINDS)
def test_each_kind_right_answer_equal_and_near_miss_not(gold, right, near, rule):
    """The right answer is equal, decided by the named rule; the near miss is not equal."""
    decision = judge.decide(right, gold)
    assert decision.equal and decision.path == rule, decision
    assert not judge.decide(near, gold).equal


@pytest.mark.parametrize(
    "gold,pred",
    [("\\frac{1}{3}", "0.333"), ("\\frac{1}{3}", "0.3"), ("\\frac{2}{3}", "0.67"), ("\\frac{\\sqrt{2}}{2}", "0.707"),
     ("\\pi", "3.14"), ("\\frac{100}{3}", "33.3"), ("\\frac{1}{7}", "0.143"), ("16386.20", "16386.21"), ("2.5", "2.54")],
)
def test_exact_gold_never_equals_a_short_decimal(gold, pred):
    """1/3 against 0.333, in either role: the tolerance (relative 1e-4, rounding at the shown digits)
    never makes them equal; nor two prices a cent apart."""
    assert not judge.is_equivalent(pred, gold)
    assert not judge.is_equivalent(gold, pred)


def test_tolerance_setting_is_used():
    """rel_tol=0 turns the approximation rule off; a looser one admits a coarser decimal."""
    assert judge.decide("0.33333", "\\frac{1}{3}").path == "tolerance"
    assert not judge.is_equivalent("0.33333", "\\frac{1}{3}", rel_tol=0)
    assert judge.decide("2.23607", "\\sqrt{5}").path == "tolerance"
    assert not judge.is_equivalent("2.23607", "\\sqrt{5}", rel_tol=0)
    assert judge.is_equivalent("2.718", "e", rel_tol=1e-3) and not judge.is_equivalent("2.718", "e")
    with pytest.raises(ValueError):
        judge.is_equivalent("1", "1", rel_tol=0.5)
    with pytest.raises(TypeError):
        judge.is_equivalent("1", "1", rel_tol="1e-4")


def test_percent_is_named():
    """`10\\%` against 0.1 is decided by the percent reading."""
    assert judge.decide("0.1", "10\\%").path == "percent"


@pytest.mark.parametrize(
    "gold,pred",
    [("x^{7}-3x^{5}+x^{3}-x+1=0", "x=1"), ("\\sin(x)^{40}+\\cos(x)^{40}", "1"), ("x^{999}+1", "(x+1)^{999}"),
     ("\\sum_{k=1}^{100} k^{k}", "3"), ("\\frac{1}{x^{900}-1}>0", "x>1"), ("sqrt(sqrt(sqrt(sqrt(x))))**16", "abs(x)")],
)
def test_heavy_rules_finish_within_the_limit(gold, pred):
    """Rules that could run long in sympy (solveset, simplify, evaluation) end within the time limit:
    a verdict or a timeout, never an exception, never past the limit + slack."""
    t0 = time.monotonic()
    decision = judge.decide(pred, gold, timeout=1.0)
    assert time.monotonic() - t0 <= 1.0 + SLACK_S
    assert decision.path in judge.RULES


@pytest.mark.parametrize("pred", ["10^{10^{10}}", "sqrt(" * 30 + "x" + ")" * 30, "x**(10**10**10)", "factorial(10**6)", "((x))" * 3000])
def test_hostile_answers_neither_raise_nor_overrun(pred):
    """Huge exponents and deep nesting, in LaTeX or plain text: not equal, within the limit."""
    t0 = time.monotonic()
    assert not judge.is_equivalent(pred, "x", timeout=1.0)
    assert time.monotonic() - t0 <= 1.0 + SLACK_S


def test_rules_that_fail_leave_math_verify_to_decide(monkeypatch):
    """A rule raising (sympy refusing an operation) is not an error: math-verify's verdict stands,
    or is asked for where our readings were to replace it."""
    from mathgrpo.grading import rules

    def broken(*args, **kwargs):
        raise TypeError("cannot")

    monkeypatch.setattr(rules, "first_rule", broken)
    request = {"gold": "\\frac{1}{2}", "pred": "0.5", "raw_gold": "\\frac{1}{2}", "raw_pred": "0.5", "deadline": time.monotonic() + 30}
    assert worker.check(request)["equal"] and worker.check(request)["rule"] == "math-verify"
    plain = dict(request, pred="1/2*x/x", raw_pred="1/2*x/x")
    assert worker.check(plain)["rule"] == "math-verify"


def test_stats_count_each_rule():
    """`stats` counts the checks each rule decided."""
    judge.reset_stats()
    judge.is_equivalent("30x-20=0", "3x-2=0")
    judge.is_equivalent("2.23607", "\\sqrt{5}")
    assert judge.stats.equation_scaling == 1 and judge.stats.tolerance == 1 and judge.stats.checks == 2
