"""`mathgrpo grade`: the verdict, both readings and the rule that decided, and the exit codes."""

import pytest

from mathgrpo.commands.grade import grade


def test_grade_prints_verdict_forms_and_path(capsys):
    """grade prints the verdict, both readings and the deciding path, and returns 0."""
    assert grade("1,000", "1000") == 0
    out = capsys.readouterr().out
    assert "verdict: EQUIVALENT" in out and "decided: string" in out
    assert grade("\\frac{1}{2}", "0.5") == 0
    out = capsys.readouterr().out
    assert "EQUIVALENT" in out and "decided: number" in out
    assert grade("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}") == 0
    out = capsys.readouterr().out
    assert "verdict: EQUIVALENT" in out and "decided: math-verify" in out and "sqrt(2)/2" in out
    assert grade("10^{10^{10^{10}}}", "3") == 0
    out = capsys.readouterr().out
    assert "NOT EQUIVALENT" in out and "decided: guard (tower" in out


@pytest.mark.parametrize("pred, gold, rule", [
    ("2.23607", "\\sqrt{5}", "tolerance"), ("30x-20=0", "3x-2=0", "equation-scaling"), ("log(5)", "\\ln 5", "identity"),
    ("50%", "0.5", "percent"), ("x=\\pm 3", "x^2-9=0", "solution-set"),
])
def test_grade_names_the_rule(pred, gold, rule, capsys):
    """The rule that decided is named (tolerance, identity, equation scaling...)."""
    assert grade(pred, gold) == 0
    out = capsys.readouterr().out
    assert "verdict: EQUIVALENT" in out and f"decided: {rule}" in out, out


def test_a_tolerance_of_zero_turns_the_approximation_off_and_a_negative_one_is_refused(capsys):
    assert grade("2.23607", "\\sqrt{5}", rel_tol=0) == 0
    assert "NOT EQUIVALENT" in capsys.readouterr().out
    assert grade("1", "1", rel_tol=-1) == 2
    assert capsys.readouterr().out.startswith("error: ")
