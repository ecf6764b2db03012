"""The plain-text reader (`grading/plaintext.py`): what it reads, that it builds sympy objects
without evaluating the text as code, and that hostile text is refused quickly."""

from __future__ import annotations

import time

import pytest
import sympy as sp

from mathgrpo.grading import plaintext

x, y, a, b, m, g, h = sp.symbols("x y a b m g h")


@pytest.mark.parametrize(
    "text,expected",
    [("sqrt(x)/2", sp.sqrt(x) / 2), ("abs(x-1)", sp.Abs(x - 1)), ("cos(x)^2", sp.cos(x) ** 2), ("x**2 + 3*x", x**2 + 3 * x),
     ("log(x, 10)", sp.log(x, 10)), ("ln(x)", sp.log(x)), ("exp(2*x)", sp.exp(2 * x)), ("2*pi", 2 * sp.pi),
     ("atan(1)", sp.pi / 4), ("ArcSin(x) + Sin(x)**2", sp.asin(x) + sp.sin(x) ** 2), ("mgh", m * g * h),
     ("2(x+1)(x-1)", 2 * (x + 1) * (x - 1)), ("|x-2||x+2|", sp.Abs(x - 2) * sp.Abs(x + 2)), ("-x^2", -(x**2)),
     ("2^-3", sp.Rational(1, 8)), ("sin^2(x)", sp.sin(x) ** 2), ("sin x + 1", sp.sin(x) + 1), ("log_2(8)", 3),
     ("1e6", 10**6), ("3e-2", sp.Rational(3, 100)), ("e**(-1)", sp.exp(-1)), ("h*rho*g*DeltaV", h * g * sp.Symbol("rho") * sp.Symbol("Delta") * sp.Symbol("V")),
     ("m_1*v_zmf", sp.Symbol("m_1") * sp.Symbol("v_zmf")), ("factorial(n)", sp.factorial(sp.Symbol("n")))],
)
def test_reads_plain_text_expressions(text, expected):
    """Functions, constants, powers (`^`, `**`), implicit products, subscripts, Greek names, `|...|`."""
    assert sp.simplify(plaintext.parse(text) - expected) == 0


def test_reads_relations_lists_and_intervals():
    """`==` and `=` make equations, a chain an And, `or`/`,` a set of equations, brackets an interval."""
    assert plaintext.parse("y == 2*x + 1") == sp.Eq(y, 2 * x + 1)
    assert plaintext.parse("x=2 or x=-2") == sp.FiniteSet(sp.Eq(x, 2), sp.Eq(x, -2))
    assert plaintext.parse("-2 < x <= 2") == sp.And(sp.Lt(-2, x), sp.Le(x, 2))
    assert plaintext.parse("(-inf, 3]") == sp.Interval(-sp.oo, 3)
    assert plaintext.parse("(1, 2)") == sp.Interval.open(1, 2)
    assert plaintext.parse("a ± b") == sp.FiniteSet(a + b, a - b)


def test_case_is_kept():
    """`M` and `m` are two variables (math-verify reads both as m)."""
    assert plaintext.parse("(M-m)/(M+m)") != 0
    assert plaintext.parse("M*m").free_symbols == {sp.Symbol("M"), m}


@pytest.mark.parametrize(
    "text,plain",
    [("sqrt(x)", True), ("x**2", True), ("2*x", True), ("v == u + a*t", True), ("pi/4", True), ("1e-3", True),
     ("\\sqrt{x}", False), ("x^2+1", False), ("Evelyn", False), ("$2*x$", False), ("\\frac{1}{2}", False), ("x_{1}*2", False)],
)
def test_looks_plain(text, plain):
    """Plain text has program-style marks (`*`, `**`, `==`, `f(`, `pi`, e-notation) and no LaTeX."""
    assert plaintext.looks_plain(text) is plain


@pytest.mark.parametrize(
    "text",
    ["__import__('os').system('true')", "exec('1')", "x.__class__", "lambda: 1", "import os", "x; y", "open('/etc/passwd')"],
)
def test_code_is_never_run(text):
    """Python syntax is not this grammar: it is refused, or read as products of letters; nothing runs."""
    try:
        value = plaintext.parse(text)
    except plaintext.PlainTextError:
        return
    assert isinstance(value, sp.Basic)


@pytest.mark.parametrize(
    "text",
    ["10^10^10", "9**9**9", "(10**9)**(10**9)", "2**100000", "factorial(10000)", "1000000!", "1e5000",
     "(" * 200 + "x" + ")" * 200, "sqrt(" * 100 + "x" + ")" * 100, "x" + "+x" * 5000],
)
def test_hostile_text_is_refused_fast(text):
    """Huge integer powers and factorials, towers, deep nesting and over-long text raise
    PlainTextError within 50 ms instead of building numbers or recursing."""
    t0 = time.monotonic()
    with pytest.raises(plaintext.PlainTextError):
        plaintext.parse(text)
    assert time.monotonic() - t0 < 0.05


def test_symbolic_powers_stay_symbolic():
    """A large power of a variable is kept as it is (no expansion): x**(10**6) reads in no time."""
    t0 = time.monotonic()
    assert plaintext.parse("x**(10**6)") == x ** (10**6)
    assert time.monotonic() - t0 < 0.05
