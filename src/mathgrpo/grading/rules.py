"""The worker's rules after math-verify: answers equal by an identity, an equation up to a factor,
an equation and its solutions, equivalent inequalities, a decimal approximation, a column vector and
a tuple; and our own readings where math-verify's cannot be trusted (plain text, case).

`decide` runs in an executor, under the check's hard time limit; each rule can only say "equal"
(a rule that finds nothing leaves math-verify's "not equal" standing), except that where our
readings replace math-verify's (`needs_own`: plain text, case that tells variables apart, a last
letter math-verify dropped as a unit) math-verify is not asked and the rules' verdict is the
verdict. The rule that decided is named in the reply:

  math-verify       math-verify's comparison (its verdict stands)
  exact             our two readings are the same sympy object (or, "not equal", no rule found them equal)
  tolerance         a decimal that rounds the other side's value to the digits it shows (`numbers.rounds_to`),
                    also inside tuples, intervals and matrices
  identity          expressions that agree at random points to 30 digits (`spotcheck.same_function`);
                    where too few points evaluate, `simplify(a - b) == 0` within SIMPLIFY_S
  vector            a column or row vector against a tuple, element by element
  equation-scaling  two equations f = 0 and g = 0 with f/g a non-zero constant (`2x+1=0`, `20x+10=0`)
  solution-set      an equation in one unknown against its solutions (`x^2=4`, `x=2 or x=-2`), over the reals
  inequality        f > 0 against c*f > 0 with c > 0, or two conditions on one variable with the same solution set
"""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from fractions import Fraction
from typing import Optional

from . import readings, spotcheck
from .numbers import approximates, decimal_literals

SIMPLIFY_S = 0.5  # at most this long (and half the time left) for one simplify or solveset call
MAX_SET_SIZE = 12


class _OutOfTime(Exception):
    """A budgeted sympy call ran out of its time."""


@contextmanager
def _budget(seconds: float):
    """Raise _OutOfTime in the block after `seconds` (SIGALRM: executors run checks on their main thread)."""
    def expire(signum, frame):
        raise _OutOfTime()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _Sides:
    """What the rules need to know about the two texts under comparison, and which rules they used."""

    def __init__(self, gold_text: str, pred_text: str, rel_tol: float, deadline: float) -> None:
        self.places = (decimal_literals(gold_text), decimal_literals(pred_text))
        self.rel_tol, self.deadline = rel_tol, deadline
        self.used: set = set()  # rules a structural comparison needed

    def seconds(self) -> float:
        """The budget of one slow sympy call."""
        return min(SIMPLIFY_S, (self.deadline - time.monotonic()) / 2)


# --- leaves: numbers and expressions --------------------------------------------------------------------


def _fraction(number) -> Optional[Fraction]:
    """A real sympy number as an exact Fraction of its 30-digit value, or None."""
    import sympy as sp

    v = spotcheck.value(number, {})
    if v is None or abs(sp.im(v)) > 0:
        return None
    return Fraction(str(sp.re(v)))


def _place(number, places: dict) -> Optional[Fraction]:
    """The shown place of a Float that was written as one of `places`' decimals, else None (exact)."""
    import sympy as sp

    if not isinstance(number, sp.Float):
        return None
    f = Fraction(str(number))
    return next((p for value, p in places.items() if abs(value - f) <= abs(value) * Fraction(1, 10**12)), None)


def _numbers_equal(a, b, sides: _Sides) -> bool:
    """Two numbers: the same to 30 digits (identity), or one a decimal rounding the other (tolerance)."""
    agree = spotcheck.same_function(readings.exact(a), readings.exact(b))
    if agree:
        sides.used.add("identity")
        return True
    fa, fb = _fraction(a), _fraction(b)
    if fa is None or fb is None:
        return False
    if approximates(fa, _place(a, sides.places[0]), fb, _place(b, sides.places[1]), sides.rel_tol):
        sides.used.add("tolerance")
        return True
    return False


def _leaves_equal(a, b, sides: _Sides) -> bool:
    """Two leaves of a structure (numbers or expressions) mean the same value."""
    import sympy as sp

    if not (isinstance(a, sp.Expr) and isinstance(b, sp.Expr)) or a.has(sp.zoo, sp.nan) or b.has(sp.zoo, sp.nan):
        return False  # `12:00` read as 12/0: undefined values are equal to nothing
    if a == b:
        return True
    if a.is_number and b.is_number:
        return _numbers_equal(a, b, sides)
    agree = spotcheck.same_function(readings.exact(a), readings.exact(b))
    if agree is None:
        agree = _simplifies_to_zero(readings.exact(a) - readings.exact(b), sides)
    if agree:
        sides.used.add("identity")
    return bool(agree)


def _simplifies_to_zero(difference, sides: _Sides) -> bool:
    """simplify(difference) == 0 within the budget (False when it runs out)."""
    import sympy as sp

    try:
        with _budget(sides.seconds()):
            return sp.simplify(difference) == 0
    except _OutOfTime:
        return False


# --- structures: tuples, intervals, sets, matrices ---------------------------------------------------


def _elements(x) -> Optional[list]:
    """The elements of a vector-like value: a row or column matrix, a tuple, or an open interval
    (how `(1, 2)` is read); None otherwise."""
    import sympy as sp

    if isinstance(x, sp.MatrixBase) and 1 in x.shape:
        return list(x)
    if isinstance(x, (sp.Tuple, tuple, list)):
        return list(x)
    if isinstance(x, sp.Interval) and x.left_open and x.right_open:
        return [x.start, x.end]
    return None


def _same(a, b, sides: _Sides) -> bool:
    """a (gold) and b (pred) are the same value, structure by structure, leaves by `_leaves_equal`."""
    import sympy as sp

    if isinstance(a, sp.MatrixBase) != isinstance(b, sp.MatrixBase):
        ea, eb = _elements(a), _elements(b)
        if ea is None or eb is None or len(ea) != len(eb):
            return False
        sides.used.add("vector")
        return all(_same(x, y, sides) for x, y in zip(ea, eb))
    if isinstance(a, sp.MatrixBase):
        return a.shape == b.shape and all(_same(x, y, sides) for x, y in zip(a, b))
    if isinstance(a, sp.Interval) or isinstance(b, sp.Interval):
        return (isinstance(a, sp.Interval) and isinstance(b, sp.Interval) and (a.left_open, a.right_open) == (b.left_open, b.right_open)
                and _same(a.start, b.start, sides) and _same(a.end, b.end, sides))
    if isinstance(a, (sp.Tuple, tuple, list)) or isinstance(b, (sp.Tuple, tuple, list)):
        return (isinstance(a, (sp.Tuple, tuple, list)) and isinstance(b, (sp.Tuple, tuple, list)) and len(a) == len(b)
                and all(_same(x, y, sides) for x, y in zip(a, b)))
    if isinstance(a, sp.FiniteSet) or isinstance(b, sp.FiniteSet):
        return isinstance(a, sp.FiniteSet) and isinstance(b, sp.FiniteSet) and _sets_match(list(a), list(b), sides)
    if isinstance(a, sp.Expr) and isinstance(b, sp.Expr):
        return _leaves_equal(a, b, sides)
    return False


def _sets_match(xs: list, ys: list, sides: _Sides) -> bool:
    """Each element of xs matches a different element of ys (same size, any order)."""
    if len(xs) != len(ys) or len(xs) > MAX_SET_SIZE:
        return False
    free = list(ys)
    for x in xs:
        hit = next((y for y in free if _same(x, y, sides)), None)
        if hit is None:
            return False
        free.remove(hit)
    return True


# --- equations and inequalities --------------------------------------------------------------------------


def _side(eq):
    """lhs - rhs of an equation, decimals exact."""
    return readings.exact(eq.lhs - eq.rhs)


def _equation_scaling(a, b, sides: _Sides) -> bool:
    """Two equations between expressions that are the same up to a non-zero constant factor."""
    import sympy as sp

    if not (isinstance(a, sp.Equality) and isinstance(b, sp.Equality)):
        return False
    if not all(isinstance(side, sp.Expr) for side in (*a.args, *b.args)):
        return False  # `x = \\pm 2`: a set on one side, for the solution-set rule
    return bool(spotcheck.constant_ratio(_side(a), _side(b)))


def _assigned_values(x) -> Optional[tuple]:
    """(symbol or None, values) of an answer that lists values: `x = 2`, `x = ±2`, `x=2 or x=-2`,
    `{2, -2}`, `2, -2`; None otherwise."""
    import sympy as sp

    if isinstance(x, sp.Equality) and isinstance(x.lhs, sp.Symbol):
        values = list(x.rhs) if isinstance(x.rhs, sp.FiniteSet) else [x.rhs]
        return (x.lhs, values) if all(v.is_number for v in values) else None
    if isinstance(x, (sp.FiniteSet, sp.Tuple)):
        parts = [_assigned_values(e) if isinstance(e, sp.Equality) else (None, [e]) for e in x]
        if any(p is None or not all(v.is_number for v in p[1]) for p in parts):
            return None
        symbols = {p[0] for p in parts} - {None}
        if len(symbols) > 1 or (symbols and any(p[0] is None for p in parts)):
            return None
        return (symbols.pop() if symbols else None, [v for p in parts for v in p[1]])
    return None


def _solutions(eq, sides: _Sides) -> Optional[tuple]:
    """(unknown, real solutions) of an equation in one unknown that has finitely many, else None."""
    import sympy as sp

    if not isinstance(eq, sp.Equality) or len(eq.free_symbols) != 1:
        return None
    x = next(iter(eq.free_symbols))
    try:
        with _budget(sides.seconds()):
            found = sp.solveset(_side(eq), x, domain=sp.S.Reals)
    except (_OutOfTime, NotImplementedError, ValueError, TypeError):
        return None
    if not isinstance(found, sp.FiniteSet) or len(found) > MAX_SET_SIZE:
        return None
    return x, list(found)


def _solution_set(a, b, sides: _Sides) -> bool:
    """An equation in one unknown on one side, its solutions listed on the other (either way round)."""
    for eq, listed in ((a, b), (b, a)):
        solved, values = _solutions(eq, sides), _assigned_values(listed)
        if solved is None or values is None or (values[0] is not None and values[0] != solved[0]):
            continue
        unique = []
        for v in values[1]:
            if not any(spotcheck.same_function(readings.exact(v), readings.exact(u)) for u in unique):
                unique.append(v)
        if _sets_match(solved[1], unique, sides):
            return True
    return False


def _as_positive(rel) -> Optional[tuple]:
    """(f, strict) with the inequality meaning f > 0 (strict) or f >= 0, else None."""
    import sympy as sp

    sign = {sp.StrictGreaterThan: (1, True), sp.GreaterThan: (1, False), sp.StrictLessThan: (-1, True), sp.LessThan: (-1, False)}
    for kind, (direction, strict) in sign.items():
        if isinstance(rel, kind):
            return readings.exact(direction * (rel.lhs - rel.rhs)), strict
    return None


def _solution_interval(x, symbol, sides: _Sides):
    """The set of reals where a condition holds (an inequality, an And/Or of them, or an interval)."""
    import sympy as sp

    if isinstance(x, sp.Set):
        return x
    if isinstance(x, (sp.And, sp.Or)):
        parts = [_solution_interval(arg, symbol, sides) for arg in x.args]
        if any(p is None for p in parts):
            return None
        return sp.Intersection(*parts) if isinstance(x, sp.And) else sp.Union(*parts)
    if _as_positive(x) is None:
        return None
    with _budget(sides.seconds()):
        return sp.solveset(readings.exact(x), symbol, domain=sp.S.Reals)


def _inequality(a, b, sides: _Sides) -> bool:
    """f > 0 against c*f > 0 with c > 0 (same strictness), or two conditions on one variable with
    the same set of solutions over the reals."""
    import sympy as sp

    fa, fb = _as_positive(a), _as_positive(b)
    if fa and fb and fa[1] == fb[1] and spotcheck.constant_ratio(fa[0], fb[0]) and spotcheck.ratio_sign(fa[0], fb[0]) == 1:
        return True
    symbols = (getattr(a, "free_symbols", set()) | getattr(b, "free_symbols", set()))
    relational = lambda x: isinstance(x, (sp.And, sp.Or)) or _as_positive(x) is not None  # noqa: E731
    if len(symbols) != 1 or not (relational(a) or relational(b)):
        return False
    symbol = next(iter(symbols))
    try:
        sa, sb = _solution_interval(a, symbol, sides), _solution_interval(b, symbol, sides)
        if sa is None or sb is None:
            return False
        with _budget(sides.seconds()):
            return sp.Complement(sa, sb) == sp.S.EmptySet and sp.Complement(sb, sa) == sp.S.EmptySet
    except (_OutOfTime, NotImplementedError, ValueError, TypeError):
        return False


# --- the rule chain -------------------------------------------------------------------------------------


def first_rule(gold, pred, gold_text: str, pred_text: str, rel_tol: float, deadline: float) -> Optional[str]:
    """The name of the first rule under which `pred` equals `gold` (sympy readings of the texts),
    or None when none does. A rule that sympy fails on (an operation it refuses) says nothing."""
    import sympy as sp

    sides = _Sides(gold_text, pred_text, rel_tol, deadline)
    relational = (sp.Equality, sp.Rel, sp.And, sp.Or)
    if not isinstance(gold, relational) and not isinstance(pred, relational):
        if _quietly(_same, gold, pred, sides):
            return next((rule for rule in ("vector", "tolerance", "identity") if rule in sides.used), "exact")
    for name, rule in (("equation-scaling", _equation_scaling), ("solution-set", _solution_set), ("inequality", _inequality)):
        if _quietly(rule, gold, pred, sides):
            return name
    return None


def _quietly(rule, gold, pred, sides: _Sides) -> bool:
    """rule(gold, pred, sides), False when sympy raises on the way (or its budget runs out)."""
    try:
        return bool(rule(gold, pred, sides))
    except (_OutOfTime, TypeError, ValueError, AttributeError, ArithmeticError, NotImplementedError, RecursionError):
        return False


def needs_own(request: dict) -> bool:
    """Whether our readings replace math-verify's for this request: a side is plain text, tells
    variables apart by case, or lost its last letter in math-verify's reading (read as a unit:
    `\\rho g` -> rho, `v_0 t` -> v_0). math-verify's verdict is then not asked for."""
    from . import plaintext

    for text in (request["gold"], request["pred"]):
        if plaintext.looks_plain(text) or readings.case_matters(text) or readings.drops_a_letter(text):
            return True
    return False


def decide(request: dict, gold_mv: list, pred_mv: list, own: bool) -> Optional[dict]:
    """The verdict of the rules on a request math-verify has read (`gold_mv`, `pred_mv`): with `own`
    (`needs_own`) on our own readings, whose verdict replaces math-verify's; otherwise on
    math-verify's readings after it said "not equal", and only to say "equal". None when there is
    nothing to add (or nothing we can read)."""
    gold_text, pred_text = request["gold"], request["pred"]
    (gold, gold_how), (pred, pred_how) = _readings(gold_text, pred_text, gold_mv, pred_mv, own)
    if gold is None or pred is None:
        return None
    note = "; ".join(sorted({h for h in (gold_how, pred_how) if h}))
    forms = {"pred_form": str(pred)[:200], "gold_form": str(gold)[:200], "note": note}
    rule = first_rule(gold, pred, gold_text, pred_text, request.get("rel_tol", 1e-4), request["deadline"])
    if rule:
        return {"equal": True, "rule": rule, **forms}
    return {"equal": False, "rule": "exact", **forms} if own else None


def _readings(gold_text: str, pred_text: str, gold_mv: list, pred_mv: list, own: bool) -> tuple:
    """((gold, how), (pred, how)): our own readings when `own`, else math-verify's (how = ""); a
    side we cannot read falls back to math-verify's, both then compared in lower case as
    math-verify reads them; symbols made canonical on both sides."""
    if own:
        (gold, gold_how), (pred, pred_how) = readings.own(gold_text), readings.own(pred_text)
        if gold is not None and pred is not None:
            return (readings.canonical(gold), gold_how), (readings.canonical(pred), pred_how)
        gold = gold if gold is not None else readings.first(gold_mv)
        pred = pred if pred is not None else readings.first(pred_mv)
        return (readings.canonical(gold, lower=True), gold_how), (readings.canonical(pred, lower=True), pred_how)
    return (readings.canonical(readings.first(gold_mv)), ""), (readings.canonical(readings.first(pred_mv)), "")
