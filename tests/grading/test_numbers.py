"""Numbers as written (`grading/numbers.py`): exact values, scientific notation, the digits a decimal
shows, and the tolerance rule for decimal approximations (never 1/3 = 0.333)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from mathgrpo.grading import numbers


@pytest.mark.parametrize(
    "key,value",
    [("1e6", 10**6), ("5.1e-2", Fraction(51, 1000)), ("-1.5e-3", Fraction(-15, 10000)), ("7\\times10^{35}", 7 * 10**35),
     ("7.1\\cdot10^{35}", 71 * 10**34), ("10^{-3}", Fraction(1, 1000)), ("10^3", 1000), ("3/4", Fraction(3, 4)),
     ("-2.50", Fraction(-5, 2)), ("1\\frac{1}{2}", Fraction(3, 2))],
)
def test_as_number_reads_scientific_notation_exactly(key, value):
    """e-notation, `\\times 10^{n}` and `\\cdot 10^{n}` are exact values, beside plain numbers and fractions."""
    assert numbers.as_number(key) == value


@pytest.mark.parametrize("key", ["1e2000", "10^{5000}", "2^{10}", "x", "1/0", "1e", "e5"])
def test_as_number_refuses_what_is_not_a_plain_number(key):
    """Exponents past MAX_EXPONENT, other bases, symbols and a zero denominator are not numbers here."""
    assert numbers.as_number(key) is None


@pytest.mark.parametrize(
    "key,place",
    [("3.1416", Fraction(1, 10**4)), ("2.50", Fraction(1, 100)), ("6.02e23", Fraction(10**21)), ("1.2e3", Fraction(100)),
     ("7.1\\cdot10^{35}", Fraction(10**34)), ("18", None), ("1e6", None), ("3/4", None)],
)
def test_shown_place_is_the_last_digit_a_decimal_shows(key, place):
    """A decimal's place; None for numbers written exactly (integers, fractions, an integer mantissa)."""
    assert numbers.shown_place(key) == place


@pytest.mark.parametrize(
    "decimal,exact,equal",
    [("0.33333", Fraction(1, 3), True), ("0.333", Fraction(1, 3), False), ("0.3333", Fraction(1, 3), True),
     ("0.66667", Fraction(2, 3), True), ("0.6666", Fraction(2, 3), False), ("2.6667", Fraction(8, 3), True),
     ("16386.2", Fraction(16387), False), ("33.3", Fraction(100, 3), False), ("33.3333", Fraction(100, 3), True)],
)
def test_tolerance_rounds_and_is_relative_1e_4(decimal, exact, equal):
    """A decimal equals an exact value it rounds to at the digits it shows, within relative 1e-4:
    0.333 (1e-3 off) is not 1/3; 0.3333 (exactly 1e-4 off: the bound is inclusive) and 0.33333 are;
    0.6666 is not 2/3 (a truncation, not a rounding)."""
    d = Fraction(decimal)
    assert numbers.approximates(d, numbers.shown_place(decimal), exact, None) is equal
    assert numbers.approximates(exact, None, d, numbers.shown_place(decimal)) is equal  # either side may be the gold


def test_two_decimals_showing_the_same_place_never_approximate_each_other():
    """16386.20 and 16386.21 are different prices; 3.1416 rounds 3.14159265 but not 3.1415."""
    a, b = Fraction("16386.20"), Fraction("16386.21")
    assert not numbers.approximates(a, Fraction(1, 100), b, Fraction(1, 100))
    assert numbers.approximates(Fraction("3.1416"), Fraction(1, 10**4), Fraction("3.14159265"), Fraction(1, 10**8))
    assert not numbers.approximates(Fraction("3.1416"), Fraction(1, 10**4), Fraction("3.1415"), Fraction(1, 10**4))


def test_the_tolerance_is_a_setting():
    """rel_tol 0 turns the rule off; a looser one (1e-3) accepts a 4-digit rounding of e."""
    e4 = Fraction("2.718")
    e = Fraction("2.718281828459045")
    assert not numbers.rounds_to(e4, Fraction(1, 1000), e)
    assert numbers.rounds_to(e4, Fraction(1, 1000), e, rel_tol=1e-3)
    assert not numbers.rounds_to(Fraction("0.33333"), Fraction(1, 10**5), Fraction(1, 3), rel_tol=0)


def test_decimal_literals_by_value():
    """Each decimal written in a text, with the place of its last digit (for tuples, intervals, matrices)."""
    found = numbers.decimal_literals("(0.6, 2.6667] and 1.5e-3, not 12 or x_1.5")
    assert found[Fraction("0.6")] == Fraction(1, 10)
    assert found[Fraction("2.6667")] == Fraction(1, 10**4)
    assert found[Fraction("0.0015")] == Fraction(1, 10**4)


@pytest.mark.parametrize("text, written", [
    ("0.\\overline{3}", "\\frac{1}{3}"), ("0.\\overline{36}", "\\frac{4}{11}"), ("1.1\\overline{6}", "\\frac{7}{6}"),
    (".\\bar{142857}", "\\frac{1}{7}"), ("0.\\overline9", "1"), ("-2.\\overline{ 5 }", "-\\frac{23}{9}"),
    ("(0.\\overline{3}, 0.\\overline{6})", "(\\frac{1}{3}, \\frac{2}{3})"),
    ("\\overline{AB}", "\\overline{AB}"), ("0.3", "0.3"), ("x.\\overline{3}", "x.\\overline{3}"),
])
def test_repeating_decimals_are_written_as_their_fractions(text, written):
    """Digits, a point, digits and repeating digits under `\\overline` or `\\bar` become the exact fraction; an
    overline over letters, a plain decimal and a variable's name are left alone."""
    assert numbers.repeating_as_fractions(text) == written
