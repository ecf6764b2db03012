"""The one judge: read the final answer out of a completion and decide whether it equals the gold.

Rewards and evaluation both call `grade`, so what training rewards is what the benchmark counts.

`is_equivalent(pred, gold)` decides in the cheapest way that can, and `decide` says which rule
decided (`RULES`); a cheap path only says "equal" for sure, never "not equal", except for two plain
numbers:
  1. string:  both sides cleaned (LaTeX spacing, `\\text{}`, units, currency, percent, thousands
              separators, `x = `, `\\langle\\rangle`, e-notation as `\\times 10^{n}`) and compared as
              strings, space insensitive, case insensitive unless case tells variables apart -> equal;
              also `1,22` against `1.22` (a decimal comma);
  2. number:  both sides plain numbers, simple fractions, mixed numbers or scientific notation
              (`numbers.py`): integers and fractions exactly, decimals within NUMBER_REL_TOL; `p%`
              also means p/100 (percent); a decimal that rounds the other number to the digits it
              shows within `rel_tol` (tolerance); two numerals with a base subscript (`52_8`) by value;
  3. guards:  a bare answer with absurd exponents/factorials or deep nesting -> not equal, no sympy;
  4. the worker process under a hard time limit (`grading/worker.py`, `grading/client.py`): math-verify
     on the cleaned forms, then the rules of `grading/rules.py` (identity, tolerance, vector,
     equation-scaling, solution-set, inequality; our own readings of plain-text answers and of
     answers whose case matters); when a side is text (math delimiters `$`, `\\(`, `\\[` or a box)
     also the raw strings as plain math-verify reads them: equal if any says so. Answers longer than
     MAX_ANSWER_CHARS are read by plain math-verify only; longer than MAX_TEXT_CHARS, as strings only.
     A check past its limit, or one math-verify fails on, counts as wrong, and `stats` counts it;
     a worker that cannot run raises GradingError.
Nothing here calls `eval`, `exec` or `sympify` on model text.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, fields
from fractions import Fraction
from functools import lru_cache
from typing import Optional, Union

from . import client, worker
from .readings import case_matters
from .numbers import (APPROX_REL_TOL, MAX_EXPONENT, approximates, as_number, base_numeral,  # noqa: F401
                      repeating_as_fractions, shown_place)
from .client import GradingError  # noqa: F401  (raised from here to the callers)
from ..data.formats import Format, get_format, last_boxed, parse_completion

DEFAULT_TIMEOUT_S = 3.0
MAX_ANSWER_CHARS = 1000  # longer answers are not cleaned: plain math-verify reads them as they are
MAX_TEXT_CHARS = 20_000  # longer still: compared as strings only, no regex, no sympy
MAX_BRACE_DEPTH = 10  # MATH-500 golds nest at most 2 deep
MAX_FACTORIAL = 1_000
# Two plain numbers, one of them written with a decimal point, are equal when they differ by at
# most this share of the larger magnitude (0.0833333333333333 = 1/12); integers and fractions
# compare exactly.
NUMBER_REL_TOL = 1e-9


# --- statistics --------------------------------------------------------------------------------


@dataclass
class GradingStats:
    """How checks were decided since the last reset; evaluation reports timeouts from here."""

    checks: int = 0
    string: int = 0
    number: int = 0
    percent: int = 0
    tolerance: int = 0
    math_verify: int = 0
    exact: int = 0
    identity: int = 0
    equation_scaling: int = 0
    solution_set: int = 0
    inequality: int = 0
    vector: int = 0
    guarded: int = 0
    too_long: int = 0
    timeouts: int = 0
    errors: int = 0

    def as_dict(self) -> dict:
        """The counters as a plain dict (for logs and reports)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


stats = GradingStats()
_stats_lock = threading.Lock()
_STAT_OF_PATH = {
    "string": "string",
    "number": "number",
    "percent": "percent",
    "tolerance": "tolerance",
    "math-verify": "math_verify",
    "exact": "exact",
    "identity": "identity",
    "equation-scaling": "equation_scaling",
    "solution-set": "solution_set",
    "inequality": "inequality",
    "vector": "vector",
    "guard": "guarded",
    "too-long": "too_long",
    "timeout": "timeouts",
    "error": "errors",
}


def reset_stats() -> None:
    """Zero every counter in `stats`."""
    with _stats_lock:
        for f in fields(stats):
            setattr(stats, f.name, 0)


def _count(path: str) -> None:
    """Count one check decided by `path`."""
    with _stats_lock:
        stats.checks += 1
        name = _STAT_OF_PATH.get(path)
        if name:
            setattr(stats, name, getattr(stats, name) + 1)


# --- normalisation -----------------------------------------------------------------------------


def _spacing(m: re.Match) -> str:
    """A LaTeX spacing command -> one space; `\\!` (negative space) -> nothing; a `\\\\` row break stays."""
    return {"\\\\": "\\\\", "\\!": ""}.get(m.group(), " ")


_SUBS = [
    (re.compile(r"\\[dtc]frac"), r"\\frac"),
    (re.compile(r"\\(?:left|right)(?![a-zA-Z])"), ""),
    (re.compile(r"\\displaystyle"), ""),
    (re.compile(r"\\\\|\\[!,;:> ]|~"), _spacing),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°"), ""),
    (re.compile(r"\\?%|\s*\b(?:percent|pct)\b\.?$"), r"\\%"),
    (re.compile(r"\\?\$"), ""),
    (re.compile(r"−"), "-"),
    (re.compile(r"√\s*\(([^()]*)\)"), r"\\sqrt{\1}"),
    (re.compile(r"√\s*(\d+(?:\.\d+)?|[a-zA-Z])"), r"\\sqrt{\1}"),
    (re.compile(r"√"), r"\\sqrt"),
    (re.compile(r"π"), r"\\pi "),
    (re.compile(r"∞"), r"\\infty "),
    (re.compile(r"[×·]"), r"\\cdot "),
    (re.compile(r"\\langle\s*|⟨"), "("),
    (re.compile(r"\s*\\rangle|⟩"), ")"),
    (re.compile(r"(?<![\w.])(\d+\.?\d*|\.\d+)[eE]([+-]?\d{1,4})(?![\w.])"), r"\1\\times 10^{\2}"),  # 1.5e-3
    (re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2060\ufeff]"), ""),
]
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mbox|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_MATH_DELIMS = re.compile(r"^\\[(\[](.*)\\[)\]]$", re.S)
_NUMBER_HEAD = r"((?:-?\d[\d,]*(?:\.\d+)?|-?\.\d+)(?:\s*\\(?:times|cdot)\s*10\^\{[+-]?\d+\})?)"
# Words after a number that are units or nouns ("18 eggs", "5 cm^2"), but not math words.
_UNIT_TAIL = re.compile(_NUMBER_HEAD + r"\s*((?:[a-zA-Z]{2,}|[mgsl])\.?(?:\s+[a-zA-Z]+\.?){0,3})(?:\s*\^\s*\{?[23]\}?)?$")
_NOT_UNITS = {"pi", "sqrt", "and", "or", "to", "times", "over", "plus", "minus", "cdot", "i", "e", "x", "y"}
_ASSIGNMENT = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*(?=[^=]*$)")
_THOUSANDS = re.compile(r"^-?(?!0[, ])\d{1,3}(?:([, ])\d{3})(?:\1\d{3})*(?:\.\d+)?(?=(?:\\%)?$)")
_MIXED_NUMBER = re.compile(r"^(-?\d+)\s+(\d+)\s*/\s*(\d+)$")
_DECIMAL_COMMA = re.compile(r"^-?\d+,\d+$")
_CHOICE = re.compile(r"^\(?([a-e])\)?$")


def _unwrap_boxed(text: str) -> str:
    """The inside of `\\boxed{...}` when the whole answer is one box."""
    if text.startswith(("\\boxed", "\\fbox")):
        inner = last_boxed(text)
        if inner is not None and text.rstrip().endswith("}"):
            return inner
    return text


def _unwrap_text(text: str) -> str:
    """`\\text{cm}` -> `cm` (and mbox, mathrm...), innermost first, a bounded number of rounds."""
    for _ in range(4):
        new = _TEXT_CMD.sub(r"\1", text)
        if new == text:
            break
        text = new
    return text


def _strip_units(text: str) -> str:
    """`18 eggs` -> `18`, `5 cm^2` -> `5`: drop words that follow a number, unless they are math."""
    m = _UNIT_TAIL.match(text)
    if m and not any(w.strip(".").lower() in _NOT_UNITS for w in m.group(2).split()):
        return m.group(1)
    return text


def _drop_thousands(text: str) -> str:
    """`1,000` or `1 000` -> `1000`, only when the whole answer is such a number (tuples untouched)."""
    m = _THOUSANDS.match(text)
    if m:
        return m.group().replace(",", "").replace(" ", "") + text[m.end():]
    return text


def _present(answer: str) -> str:
    """An answer with presentation removed: box, `$`, spacing, `\\text{}`, `;` lists, `1 1/2`, repeating decimals
    as fractions (what math-verify reads)."""
    text = _unwrap_boxed(answer.strip()).strip().strip("$").strip()
    m = _MATH_DELIMS.match(text)
    text = m.group(1).strip() if m else text
    for pattern, repl in _SUBS:
        text = pattern.sub(repl, text)
    text = _unwrap_text(text).strip().rstrip(".").strip().replace(";", ",")
    text = _MIXED_NUMBER.sub(r"\1\\frac{\2}{\3}", repeating_as_fractions(text))
    return _drop_thousands(_strip_units(text))


def clean(answer: str) -> str:
    """The string key's reading of an answer: `_present` without `\\%` and a leading `x = `."""
    text = answer.strip()
    if len(text) > MAX_ANSWER_CHARS:
        return text
    text = _present(text).replace("\\%", "").strip()
    text = _ASSIGNMENT.sub("", text)
    return _drop_thousands(_strip_units(text.strip()))


def string_key(cleaned: str) -> str:
    """The comparison key: no white space, lower case (unless case tells variables apart, see
    `case_matters`), a lone choice letter without its brackets."""
    key = "".join(cleaned.split())
    key = key if case_matters(key) else key.lower()
    m = _CHOICE.match(key)
    return m.group(1) if m else key


def numeric_value(answer: str) -> Optional[Fraction]:
    """The exact value of an answer that is a plain number once cleaned (`$1,000`, `50%`, `\\frac12`), else None."""
    return _prepare(answer).number


@dataclass(frozen=True)
class _Prepared:
    """One side of a comparison, normalised once."""

    math: str  # presentation removed: what math-verify reads
    key: str  # the string key (also without `x =` and percent signs)
    number: Optional[Fraction]
    base: Optional[int]  # the value of a numeral written in a base, `52_8` -> 42
    exact: bool  # the number is written without a decimal point (integer, fraction)
    place: Optional[Fraction]  # a decimal's last shown digit, 0.01 for `2.50` (None when exact)
    percent: bool
    long: bool


def _prepare(answer: str) -> _Prepared:
    """Clean an answer and compute its key and numeric value (cheap, no sympy)."""
    if len(answer) > MAX_ANSWER_CHARS:
        return _Prepared(answer, "".join(answer.split()).lower(), None, None, False, None, False, True)
    math = _present(answer)
    key = string_key(clean(answer))
    number = as_number(key)
    place = shown_place(key) if number is not None else None
    return _Prepared(math, key, number, base_numeral(key), "." not in key, place, "\\%" in math, False)


_prepare_gold = lru_cache(maxsize=16384)(_prepare)


# --- guards ------------------------------------------------------------------------------------

_EXPONENT = re.compile(r"(?:\^|\*\*)\s*\{?\s*\(?\s*(\d+)")
_TOWER = re.compile(r"\d\s*(?:\^|\*\*)\s*\{?\s*\(?\s*\d+\s*\}?\s*(?:\^|\*\*)\s*\{?\s*\(?\s*\d")
_FACTORIAL = re.compile(r"(\d+)\s*!")


def _brace_depth(text: str) -> int:
    """The deepest nesting of (), [] and {} in `text`."""
    depth = deepest = 0
    for ch in text:
        if ch in "({[":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")}]":
            depth -= 1
    return deepest


def hostile_reason(text: str) -> Optional[str]:
    """Why `text` must not reach sympy (a number it would build, nesting sympy would recurse into), or None."""
    if _brace_depth(text) > MAX_BRACE_DEPTH:
        return "nesting too deep"
    if _TOWER.search(text):
        return "tower of numeric exponents"
    if any(len(e) > 5 or int(e) > MAX_EXPONENT for e in _EXPONENT.findall(text)):
        return "exponent too large"
    if any(len(n) > 4 or int(n) > MAX_FACTORIAL for n in _FACTORIAL.findall(text)):
        return "factorial too large"
    return None


# --- the decision ------------------------------------------------------------------------------

# What can decide a check: the cheap paths here, then the worker (math-verify and `rules.py`'s rules).
RULES = ("empty", "string", "number", "percent", "tolerance", "too-long", "guard", "math-verify", "exact", "identity",
         "vector", "equation-scaling", "solution-set", "inequality", "timeout", "error")


@dataclass(frozen=True)
class Decision:
    """Equal or not, which rule decided (`RULES`), and what each side was read as."""

    equal: bool
    path: str  # the rule that decided: one of RULES
    pred_form: str
    gold_form: str
    note: str = ""


def _check_args(pred, gold, timeout, rel_tol) -> None:
    """TypeError for answers that are not strings or a time limit or tolerance that is not a number;
    ValueError for a limit <= 0 or a tolerance outside [0, 0.1]."""
    for name, value in (("pred", pred), ("gold", gold)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__} ({value!r:.40})")
    for name, value in (("timeout", timeout), ("rel_tol", rel_tol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    if not 0 <= rel_tol <= 0.1:
        raise ValueError(f"rel_tol must be between 0 and 0.1 (a relative tolerance), got {rel_tol}")


def _readings(side: _Prepared) -> list:
    """(value, shown place, rule) for each value a number may mean: itself ("number"), and for
    `p%` also p/100 ("percent")."""
    readings = [(side.number, side.place, "number")]
    if side.percent:
        readings.append((side.number / 100, side.place / 100 if side.place else None, "percent"))
    return readings


def _close(a: Fraction, b: Fraction) -> bool:
    """Equal within NUMBER_REL_TOL of the larger magnitude."""
    return abs(a - b) <= NUMBER_REL_TOL * max(abs(a), abs(b))


def _compare_numbers(p: _Prepared, g: _Prepared, rel_tol: float) -> Optional[tuple]:
    """(equal, rule) for two plain numbers, or None when math-verify must decide.

    Integers and fractions compare exactly, both ways. With a decimal on either side, agreement
    within NUMBER_REL_TOL is equal ("number" or "percent"), and so is a decimal that rounds the other
    number to the digits it shows ("tolerance", `numbers.rounds_to`); a larger difference goes to
    math-verify (which rounds to 6 places).
    """
    pairs = [(a, b) for a in _readings(p) for b in _readings(g)]
    for (a, _, rule_a), (b, _, rule_b) in pairs:
        if a == b:
            return True, "percent" if "percent" in (rule_a, rule_b) else "number"
    if p.exact and g.exact:
        return False, "number"
    if any(_close(a, b) for (a, _, _), (b, _, _) in pairs):
        return True, "number"
    if any(approximates(a, pa, b, pb, rel_tol) for (a, pa, _), (b, pb, _) in pairs):
        return True, "tolerance"
    return None


def _text_side(side: _Prepared, raw: str) -> bool:
    """A side that is text rather than a bare answer (long, or with math delimiters or a box): the
    guards do not read it, plain math-verify picks its answer out of it, under the time limit."""
    return side.long or worker.delimited(raw)


def _decimal_comma(a: str, b: str) -> bool:
    """`1,22` and `1.22`: one side a decimal with a comma for the point, the other the same digits with a point."""
    return bool(_DECIMAL_COMMA.match(a)) and a.replace(",", ".") == b


def _cheap(p: _Prepared, g: _Prepared, pred: str, gold: str, rel_tol: float) -> Optional[Decision]:
    """The decision of a path that needs no sympy, or None when the worker must decide (`pred`
    and `gold` are the raw answers `p` and `g` were prepared from)."""
    if not p.key or not g.key:
        return Decision(False, "empty", p.key, g.key)
    if p.key == g.key or _decimal_comma(p.key, g.key) or _decimal_comma(g.key, p.key):
        return Decision(True, "string", p.key, g.key)
    if p.number is not None and g.number is not None:
        decided = _compare_numbers(p, g, rel_tol)
        if decided is not None:
            return Decision(decided[0], decided[1], str(p.number), str(g.number))
    if max(len(p.math), len(g.math)) > MAX_TEXT_CHARS:
        return Decision(False, "too-long", p.key[:80], g.key[:80])
    if p.base is not None and g.base is not None:
        return Decision(p.base == g.base, "number", f"{p.base} (base 10)", f"{g.base} (base 10)")
    reason = None if _text_side(p, pred) or _text_side(g, gold) else hostile_reason(p.math) or hostile_reason(g.math)
    if reason:
        return Decision(False, "guard", p.math[:80], g.math[:80], reason)
    return None


def decide(pred: str, gold: str, timeout: float = DEFAULT_TIMEOUT_S, rel_tol: float = APPROX_REL_TOL) -> Decision:
    """Compare `pred` with `gold` (cheap paths first, the worker's rules last) and say which rule decided.

    `rel_tol`: the tolerance for an answer written as a decimal approximation (`numbers.rounds_to`).
    Raises TypeError for non-string answers and GradingError when the worker cannot run.
    """
    _check_args(pred, gold, timeout, rel_tol)
    try:
        p, g = _prepare(pred), _prepare_gold(gold)
        cheap = _cheap(p, g, pred, gold, rel_tol)
    except Exception as exc:  # a bug in our normalisation: math-verify reads the raw strings instead
        return _ask_worker(pred.strip(), gold.strip(), pred, gold, timeout, rel_tol, f"normalisation failed: {exc!r:.80}")
    if cheap is not None:
        return cheap
    if p.long or g.long:
        return _ask_worker(pred, gold, pred, gold, timeout, rel_tol, "long: read by plain math-verify", plain_only=True)
    return _ask_worker(p.math, g.math, pred, gold, timeout, rel_tol)


def _ask_worker(pred: str, gold: str, raw_pred: str, raw_gold: str, timeout: float, rel_tol: float, note: str = "",
                plain_only: bool = False) -> Decision:
    """Ask the worker (math-verify, then the rules of `grading/rules.py`), within `timeout` of now; a
    timeout or a failure on the input means not equal, under the path "timeout" or "error"."""
    worker_client = client.get_client()
    worker_client.start()  # the one-off start of the worker is not part of the limit
    reply = worker_client.verify(pred, gold, raw_pred, raw_gold, time.monotonic() + timeout, plain_only, rel_tol)
    if reply["status"] == "ok":
        how = "" if reply["how"] == "cleaned" else "raw strings"
        note = "; ".join(x for x in (reply.get("note", ""), how or note) if x)
        return Decision(reply["equal"], reply.get("rule", "math-verify"), reply["pred_form"], reply["gold_form"], note)
    if reply["status"] == "timeout":
        return Decision(False, "timeout", pred[:80], gold[:80], f"over {timeout:g} s")
    return Decision(False, "error", pred[:80], gold[:80], reply.get("message", ""))


def is_equivalent(pred: str, gold: str, timeout: float = DEFAULT_TIMEOUT_S, rel_tol: float = APPROX_REL_TOL) -> bool:
    """True when the predicted answer means the same as the gold answer; never hangs.

    `timeout` bounds the whole call in seconds, from any thread; a check that overruns it counts as
    wrong and as a timeout in `stats`. `rel_tol` is the tolerance for answers written as decimal
    approximations (default 1e-4, `numbers.rounds_to`). Raises TypeError when `pred` or `gold` is
    not a str, and GradingError when the worker cannot run (never a silent False).
    """
    decision = decide(pred, gold, timeout, rel_tol)
    _count(decision.path)
    return decision.equal


def warm_up(workers: Optional[int] = None) -> None:
    """Start the math-verify worker now instead of on the first hard check.

    `workers` is accepted for old callers and ignored: one worker process serves every thread,
    each check in its own forked child.
    """
    client.get_client().start()


# --- completions ---------------------------------------------------------------------------------


def _as_format(fmt: Union[Format, str]) -> Format:
    """A Format from a Format or a preset name."""
    return get_format(fmt) if isinstance(fmt, str) else fmt


def extract_answer(completion: str, fmt: Union[Format, str]) -> Optional[str]:
    """The final answer a completion gives in format `fmt`, or None when it gives none.

    Read by `formats.parse_completion`: after the last answer marker, or the last `\\boxed{}` for
    the boxed preset. Free text without a marker is not guessed from.
    """
    return parse_completion(completion, _as_format(fmt)).answer


@dataclass(frozen=True)
class Verdict:
    """One graded completion: the answer read from it, whether it is right, whether the form is."""

    answer: Optional[str]
    correct: bool
    well_formed: bool
    rule: str = ""  # the rule that decided (`RULES`); "" when the completion gave no answer


def grade(completion: str, problem, fmt: Union[Format, str], timeout: float = DEFAULT_TIMEOUT_S,
          rel_tol: float = APPROX_REL_TOL) -> Verdict:
    """Grade one completion against `problem.answer`: the call rewards and evaluation share."""
    parsed = parse_completion(completion, _as_format(fmt))
    if not parsed.answer:
        return Verdict(answer=parsed.answer, correct=False, well_formed=parsed.well_formed)
    decision = decide(parsed.answer, problem.answer, timeout, rel_tol)
    _count(decision.path)
    return Verdict(parsed.answer, decision.equal, parsed.well_formed, decision.path)
