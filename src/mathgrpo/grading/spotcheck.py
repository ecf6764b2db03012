"""Numeric spot-checks: do two sympy expressions agree at random points? (runs in the worker's executors)

The identity rule asks this instead of `simplify(a - b) == 0`: evaluating both sides at a few points to
30 significant digits takes milliseconds, says "different" for sure at the first point where they
differ, and finds identities that simplify misses (`sqrt(3 + 2 sqrt 2)` = 1 + sqrt 2, `|x-2||x+2|` =
|x^2-4|). `same_function` answers None when too few points could be evaluated; the caller may then
try simplify under a time budget (`rules.py`).

Where the points come from: when either side has a root, a logarithm or a non-integer power, every
variable is drawn from [0.2, 2.5] (such answers presume positive quantities: sqrt(x^2) = x,
sqrt(1/x) = 1/sqrt(x), ln(xy) = ln x + ln y); otherwise from [-2.5, -0.2] and [0.2, 2.5] too, so that
x and |x| stay apart. Points are drawn from a fixed seed: the same pair always gets the same verdict.
"""

from __future__ import annotations

import random
from typing import Optional

N_POINTS = 6
MIN_POINTS = 3  # points where both sides evaluate, needed before any verdict
DIGITS = 30
REL_TOL = 1e-12  # two values agree within this share of the larger (the inputs are exact: only rounding differs)
ABS_TOL = 1e-20
SEED = 28


def positive_domain(*exprs) -> bool:
    """Whether the variables should be drawn positive: a side has a root, log or non-integer power."""
    import sympy as sp

    for expr in exprs:
        if expr.has(sp.log) or any(not p.exp.is_integer for p in expr.atoms(sp.Pow)):
            return True
    return False


def points(symbols: list, positive: bool, n: int = N_POINTS) -> list:
    """`n` points {symbol: value}, the same ones for the same symbols and domain."""
    import sympy as sp

    rng = random.Random(SEED)
    out = []
    for _ in range(n):
        point = {}
        for s in symbols:
            magnitude = rng.uniform(0.2, 2.5)
            sign = 1 if positive or rng.random() < 0.5 else -1
            point[s] = sp.Rational(round(sign * magnitude * 10**6), 10**6)
        out.append(point)
    return out


def value(expr, point: dict):
    """`expr` at `point` to DIGITS digits, or None where it is undefined, infinite or cannot be evaluated."""
    import sympy as sp

    try:
        v = sp.N(expr.subs(point), DIGITS)
    except (TypeError, ValueError, ArithmeticError, AttributeError, RecursionError):
        return None
    if not v.is_number or v.has(sp.zoo, sp.nan, sp.oo, -sp.oo) or not v.is_finite:
        return None
    return v


def agree(a, b) -> bool:
    """Two evaluated values are the same number (up to rounding at DIGITS digits)."""
    return bool(abs(a - b) <= REL_TOL * max(abs(a), abs(b)) + ABS_TOL)


def _symbols(*exprs) -> list:
    """The free symbols of `exprs`, in a fixed order."""
    found = set()
    for e in exprs:
        found |= e.free_symbols
    return sorted(found, key=str)


def same_function(a, b) -> Optional[bool]:
    """True when a and b agree at every point that evaluates (at least MIN_POINTS), False at the
    first point where they differ, None when too few points evaluate."""
    symbols = _symbols(a, b)
    if not symbols:
        va, vb = value(a, {}), value(b, {})
        return None if va is None or vb is None else agree(va, vb)
    valid = 0
    for point in points(symbols, positive_domain(a, b)):
        va, vb = value(a, point), value(b, point)
        if va is None or vb is None:
            continue
        if not agree(va, vb):
            return False
        valid += 1
    return True if valid >= MIN_POINTS else None


def constant_ratio(f, g) -> Optional[bool]:
    """Whether f/g is a non-zero constant (f = c*g): True, False, or None when too few points evaluate.
    Used for equations f = 0 and g = 0 that are the same up to a factor."""
    symbols = _symbols(f, g)
    ratios = []
    for point in points(symbols, positive_domain(f, g)) if symbols else [{}]:
        vf, vg = value(f, point), value(g, point)
        if vf is None or vg is None:
            continue
        if agree(vg, 0) or agree(vf, 0):
            if not (agree(vg, 0) and agree(vf, 0)):
                return False  # one side vanishes where the other does not
            continue
        ratios.append(vf / vg)
    if len(ratios) < (MIN_POINTS if symbols else 1):
        return None
    return all(agree(r, ratios[0]) for r in ratios)


def ratio_sign(f, g) -> Optional[int]:
    """The sign of f/g at the first point where it evaluates (+1 or -1; call after `constant_ratio`),
    or None where the ratio is not real."""
    import sympy as sp

    symbols = _symbols(f, g)
    for point in points(symbols, positive_domain(f, g)) if symbols else [{}]:
        vf, vg = value(f, point), value(g, point)
        if vf is None or vg is None or agree(vg, 0) or agree(vf, 0):
            continue
        r = vf / vg
        if abs(sp.im(r)) > REL_TOL * abs(r):
            return None
        return 1 if sp.re(r) > 0 else -1
    return None
