"""Numbers as answers are written: their exact value, how many digits a decimal shows, and the
tolerance rule for a decimal that stands for a value it only approximates.

Pure Python (`fractions`), no sympy: the judge's cheap path and the worker's rules both use it.

The tolerance rule (`APPROX_REL_TOL`): a decimal d that shows its last digit at place u (`3.1416`:
u = 0.0001; `6.02e23`: u = 1e21) equals a value v written with more precision (exact, or a decimal
with more digits) when v rounds to d at that place AND is within a relative `rel_tol` of it:
|v - d| <= u/2 and |v - d| <= rel_tol * |v|. So `0.33333` = 1/3 but `0.333` != 1/3 (3.3e-4 > 1e-4);
`3.1416` = pi; `16386.2` != `16387` (0.8 > 0.05); two decimals that show the same places compare
exactly. Relative 1e-4 for answers written as approximations is the convention of several peer
graders; the rounding bound stops a long decimal from absorbing a difference its own digits show.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Optional

APPROX_REL_TOL = 1e-4
MAX_EXPONENT = 1_000  # 10^n beyond this is not read as a number (and is guarded before sympy)

_DECIMAL = r"[+-]?(?:\d+\.?\d*|\.\d+)"
_PLAIN_NUMBER = re.compile(rf"^{_DECIMAL}$")
_SLASH_FRACTION = re.compile(r"^([+-]?\d+)/(\d+)$")
_LATEX_FRACTION = re.compile(r"^([+-]?)(\d*)\\frac(?:\{(\d+)\}|(\d))(?:\{(\d+)\}|(\d))$")
_BASE_NUMERAL = re.compile(r"^(\d[0-9a-z]{0,39})_\{?(\d{1,2})\}?$")  # starts with a digit: a_{11} is a variable
# `1.5e-3` (keys are lower case), `7\times10^{35}`, `7.1\cdot10^{35}`, `10^{-3}` (keys have no spaces)
_SCI_E = re.compile(rf"^({_DECIMAL})e([+-]?\d+)$")
_SCI_TIMES = re.compile(rf"^(?:({_DECIMAL})(?:\\times|\\cdot|\*))?10\^(?:\{{([+-]?\d+)\}}|(\d))$")


def _scientific(key: str) -> Optional[tuple]:
    """(mantissa text, exponent) of a number in scientific notation, else None."""
    m = _SCI_E.match(key)
    if m:
        return m.group(1), int(m.group(2))
    m = _SCI_TIMES.match(key)
    if m:
        return m.group(1) or "1", int(m.group(2) or m.group(3))
    return None


def as_number(key: str) -> Optional[Fraction]:
    """The exact value of a plain number, simple fraction, mixed number or number in scientific
    notation (`-2.50`, `3/4`, `\\frac{3}{4}`, `1\\frac{1}{2}` read as math-verify reads it: 3/2,
    `1.5e-3`, `7\\times10^{35}`), else None. `key` is an answer's string key (no spaces, lower case)."""
    if len(key) > 100:
        return None
    try:
        if _PLAIN_NUMBER.match(key):
            return Fraction(key)
        sci = _scientific(key)
        if sci:
            mantissa, exponent = sci
            return Fraction(mantissa) * Fraction(10) ** exponent if abs(exponent) <= MAX_EXPONENT else None
        m = _SLASH_FRACTION.match(key)
        if m:
            return Fraction(int(m.group(1)), int(m.group(2)))
        m = _LATEX_FRACTION.match(key)
        if m:
            value = int(m.group(2) or 0) + Fraction(int(m.group(3) or m.group(4)), int(m.group(5) or m.group(6)))
            return -value if m.group(1) == "-" else value
    except ZeroDivisionError:
        return None
    return None


# `0.\overline{3}`, `8.1\overline{6}`, `.\bar{142857}`: digits, a point, digits, then the repeating digits
_REPEATING = re.compile(r"(?<![\w.])(\d{0,40})\.(\d{0,40})\\(?:overline|bar)\s*(?:\{\s*(\d{1,40})\s*\}|(\d))")


def _repeating_value(whole: str, fixed: str, repeat: str) -> Fraction:
    """whole.fixed(repeat)(repeat)...: whole + (fixed+repeat - fixed) / (10^len(fixed) * (10^len(repeat) - 1))."""
    return int(whole or 0) + Fraction(int(fixed + repeat) - int(fixed or 0), 10 ** len(fixed) * (10 ** len(repeat) - 1))


def repeating_as_fractions(text: str) -> str:
    """Every repeating decimal in `text` written as the exact fraction it is (`0.\\overline{3}` -> `\\frac{1}{3}`,
    `1.1\\overline{6}` -> `\\frac{7}{6}`), so that every reading of an answer sees its value (math-verify reads
    `0.\\overline{3}` as 0)."""
    def fraction(m: re.Match) -> str:
        value = _repeating_value(m.group(1), m.group(2), m.group(3) or m.group(4))
        return f"\\frac{{{value.numerator}}}{{{value.denominator}}}" if value.denominator != 1 else str(value)

    return _REPEATING.sub(fraction, text) if "\\" in text else text


def shown_place(key: str) -> Optional[Fraction]:
    """The place value of the last digit a decimal shows (`3.1416` -> 1/10000, `6.02e23` -> 10^21),
    or None for a number written exactly (integer, fraction, `1e6`)."""
    if _PLAIN_NUMBER.match(key):
        mantissa, exponent = key, 0
    else:
        sci = _scientific(key)
        if not sci or abs(sci[1]) > MAX_EXPONENT:
            return None
        mantissa, exponent = sci
    if "." not in mantissa:
        return None
    places = len(mantissa.split(".")[1])
    return Fraction(10) ** (exponent - places)


def base_numeral(key: str) -> Optional[int]:
    """The value of a numeral with its base as a subscript (`52_8`, `4210_{5}`, `1a_{16}`; bases 2-36), else None."""
    m = _BASE_NUMERAL.match(key)
    if not m or not 2 <= int(m.group(2)) <= 36:
        return None
    try:
        return int(m.group(1), int(m.group(2)))
    except ValueError:  # a digit the base does not have
        return None


def rounds_to(decimal: Fraction, place: Fraction, value: Fraction, rel_tol: float = APPROX_REL_TOL) -> bool:
    """Whether `decimal`, showing its last digit at `place`, is `value` written to that many digits:
    |value - decimal| <= place/2 and <= rel_tol * |value| (the rule in this module's docstring)."""
    gap = abs(value - decimal)
    return gap <= place / 2 and gap <= Fraction(repr(rel_tol)) * abs(value)  # repr: 1e-4 is exactly 1/10000


def approximates(a: Fraction, a_place: Optional[Fraction], b: Fraction, b_place: Optional[Fraction],
                 rel_tol: float = APPROX_REL_TOL) -> bool:
    """Whether one of two numbers is a decimal approximation of the other: the one showing fewer
    digits (a larger place; an exact number shows all) rounds to it. Two decimals showing the same
    place, or two exact numbers, never do (they compare exactly elsewhere)."""
    if a_place is not None and (b_place is None or b_place < a_place):
        return rounds_to(a, a_place, b, rel_tol)
    if b_place is not None and (a_place is None or a_place < b_place):
        return rounds_to(b, b_place, a, rel_tol)
    return False


_LITERAL = re.compile(r"(?<![\w.])(\d+\.\d+|\.\d+)(?:[eE]([+-]?\d{1,3}))?(?![\w.])")


def decimal_literals(text: str) -> dict:
    """Each decimal written in `text` (`0.6`, `2.6667`, `1.5e-3`) -> the place of its last shown
    digit, by value; for reading the approximations inside a tuple, interval or matrix."""
    found = {}
    for m in _LITERAL.finditer(text):
        exponent = int(m.group(2) or 0)
        value = Fraction(m.group(1)) * Fraction(10) ** exponent
        place = Fraction(10) ** (exponent - len(m.group(1).split(".")[1]))
        found[value] = max(place, found.get(value, place))
    return found
