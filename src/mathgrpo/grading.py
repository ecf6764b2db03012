"""The one judge: read the final answer out of a completion and decide whether it equals the gold.

Rewards and evaluation both call `grade`, so what training rewards is what the benchmark counts.

`is_equivalent(pred, gold)` decides in the cheapest way that can:
  1. string:  both sides cleaned (LaTeX spacing, `\\text{}`, units, currency, percent, thousands
              commas, `x = `) and compared as strings, case and space insensitive;
  2. number:  both sides plain numbers or simple fractions -> exact rational comparison;
  3. guards:  over-long answers, absurd exponents/factorials, deep nesting -> not equal, no sympy;
  4. math-verify in a worker process under a hard time limit (`grading_worker`); on timeout or
     any error the answer counts as wrong, and `stats` counts it.
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

from . import grading_worker
from .formats import Format, get_format, last_boxed, parse_completion

DEFAULT_TIMEOUT_S = 3.0
MAX_ANSWER_CHARS = 1000  # longer answers are compared as strings only: no regex, no sympy
MAX_BRACE_DEPTH = 10  # MATH-500 golds nest at most 2 deep
MAX_EXPONENT = 1_000  # MATH-500 golds have exponents up to 8
MAX_FACTORIAL = 1_000


# --- statistics --------------------------------------------------------------------------------


@dataclass
class GradingStats:
    """How checks were decided since the last reset; evaluation reports timeouts from here."""

    checks: int = 0
    string: int = 0
    number: int = 0
    math_verify: int = 0
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
    "math-verify": "math_verify",
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

_SUBS = [
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\(?:left|right)(?![a-zA-Z])"), ""),
    (re.compile(r"\\displaystyle"), ""),
    (re.compile(r"\\[!,;:> ]|~"), " "),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°"), ""),
    (re.compile(r"\\?%"), ""),
    (re.compile(r"\\?\$"), ""),
    (re.compile(r"−"), "-"),
    (re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2060\ufeff]"), ""),
]
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|mbox|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_MATH_DELIMS = re.compile(r"^\\[(\[](.*)\\[)\]]$", re.S)
_NUMBER_HEAD = r"(-?\d[\d,]*(?:\.\d+)?|-?\.\d+)"
# Words after a number that are units or nouns ("18 eggs", "5 cm^2"), but not math words.
_UNIT_TAIL = re.compile(_NUMBER_HEAD + r"\s*((?:[a-zA-Z]{2,}|[mgsl])\.?(?:\s+[a-zA-Z]+\.?){0,3})(?:\s*\^\s*\{?[23]\}?)?$")
_NOT_UNITS = {"pi", "sqrt", "and", "or", "to", "times", "over", "plus", "minus", "cdot", "i", "e", "x", "y"}
_ASSIGNMENT = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*(?=[^=]*$)")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:([, ])\d{3})(?:\1\d{3})*(?:\.\d+)?$")
_CHOICE = re.compile(r"^\(?([a-e])\)?$")
_PLAIN_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)$")
_SLASH_FRACTION = re.compile(r"^([+-]?\d+)/(\d+)$")
_LATEX_FRACTION = re.compile(r"^([+-]?)\\frac(?:\{(\d+)\}|(\d))(?:\{(\d+)\}|(\d))$")


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
    if _THOUSANDS.match(text):
        return text.replace(",", "").replace(" ", "")
    return text


def clean(answer: str) -> str:
    """An answer with presentation removed, still LaTeX: what both the string key and math-verify read."""
    text = answer.strip()
    if len(text) > MAX_ANSWER_CHARS:
        return text
    text = _unwrap_boxed(text)
    text = text.strip().strip("$").strip()
    m = _MATH_DELIMS.match(text)
    text = m.group(1).strip() if m else text
    for pattern, repl in _SUBS:
        text = pattern.sub(repl, text)
    text = _unwrap_text(text).strip().rstrip(".").strip()
    text = _ASSIGNMENT.sub("", text)
    text = _strip_units(text)
    return _drop_thousands(text.strip())


def string_key(cleaned: str) -> str:
    """The comparison key: no white space, lower case, a lone choice letter without its brackets."""
    key = "".join(cleaned.split()).lower()
    m = _CHOICE.match(key)
    return m.group(1) if m else key


def as_number(key: str) -> Optional[Fraction]:
    """The exact value of a plain number or simple fraction (`-2.50`, `3/4`, `\\frac{3}{4}`), else None."""
    if len(key) > 100:
        return None
    try:
        if _PLAIN_NUMBER.match(key):
            return Fraction(key)
        m = _SLASH_FRACTION.match(key)
        if m:
            return Fraction(int(m.group(1)), int(m.group(2)))
        m = _LATEX_FRACTION.match(key)
        if m:
            value = Fraction(int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5)))
            return -value if m.group(1) == "-" else value
    except ZeroDivisionError:
        return None
    return None


def numeric_value(answer: str) -> Optional[Fraction]:
    """The exact value of an answer that is a plain number once cleaned (`$1,000`, `50%`, `\\frac12`), else None."""
    return _prepare(answer).number


@dataclass(frozen=True)
class _Prepared:
    """One side of a comparison, normalised once."""

    cleaned: str
    key: str
    number: Optional[Fraction]
    long: bool


def _prepare(answer: str) -> _Prepared:
    """Clean an answer and compute its key and numeric value (cheap, no sympy)."""
    if len(answer) > MAX_ANSWER_CHARS:
        return _Prepared(answer, "".join(answer.split()).lower(), None, True)
    cleaned = clean(answer)
    key = string_key(cleaned)
    return _Prepared(cleaned, key, as_number(key), False)


_prepare_gold = lru_cache(maxsize=16384)(_prepare)


# --- guards ------------------------------------------------------------------------------------

_EXPONENT = re.compile(r"(?:\^|\*\*)\s*\{?\s*\(?\s*(\d+)")
_TOWER = re.compile(r"\d\s*(?:\^|\*\*)\s*\{?\s*\(?\s*\d+\s*\}?\s*(?:\^|\*\*)\s*\{?\s*\(?\s*\d")
_FACTORIAL = re.compile(r"(\d+)\s*!")
# Characters no answer of ours is written with; math-verify would spend its whole limit on them.
_NOT_MATH = re.compile(r"[@#\"?;`]")


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
    """Why `text` must not reach sympy (a number it would build, nesting, malformed LaTeX), or None."""
    if _brace_depth(text) > MAX_BRACE_DEPTH:
        return "nesting too deep"
    if text.count("{") != text.count("}"):
        return "unbalanced braces"
    if _NOT_MATH.search(text):
        return "characters that are not math"
    if _TOWER.search(text):
        return "tower of numeric exponents"
    if any(len(e) > 5 or int(e) > MAX_EXPONENT for e in _EXPONENT.findall(text)):
        return "exponent too large"
    if any(len(n) > 4 or int(n) > MAX_FACTORIAL for n in _FACTORIAL.findall(text)):
        return "factorial too large"
    return None


# --- the decision ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """Equal or not, which path decided, and what each side was read as."""

    equal: bool
    path: str  # string | number | guard | too-long | math-verify | timeout | error | empty
    pred_form: str
    gold_form: str
    note: str = ""


def decide(pred: str, gold: str, timeout: float = DEFAULT_TIMEOUT_S) -> Decision:
    """Compare `pred` with `gold` (fast paths first, math-verify last) and say how it was decided."""
    p, g = _prepare(pred), _prepare_gold(gold)
    if not p.key or not g.key:
        return Decision(False, "empty", p.key, g.key)
    if p.key == g.key:
        return Decision(True, "string", p.key, g.key)
    if p.number is not None and g.number is not None:
        return Decision(p.number == g.number, "number", str(p.number), str(g.number))
    if p.long or g.long:
        return Decision(False, "too-long", p.key[:80], g.key[:80])
    reason = hostile_reason(p.cleaned) or hostile_reason(g.cleaned)
    if reason:
        return Decision(False, "guard", p.cleaned[:80], g.cleaned[:80], reason)
    return _math_verify(p.cleaned, g.cleaned, timeout)


def _math_verify(pred: str, gold: str, timeout: float) -> Decision:
    """Ask a worker; a timeout or an error means not equal."""
    reply = grading_worker.get_pool().verify(pred, gold, timeout)
    if reply[0] == "ok":
        return Decision(reply[1], "math-verify", reply[2], reply[3])
    if reply[0] == "timeout":
        return Decision(False, "timeout", pred[:80], gold[:80], f"over {timeout:g} s")
    return Decision(False, "error", pred[:80], gold[:80], reply[1])


def is_equivalent(pred: Optional[str], gold: str, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    """True when the predicted answer means the same as the gold answer; never raises, never hangs.

    `timeout` bounds the math-verify part in seconds, from any thread; a check that overruns it
    counts as wrong and as a timeout in `stats`.
    """
    if pred is None:
        return False
    try:
        decision = decide(pred, gold, timeout)
    except Exception:  # a bug in our own normalisation must cost one answer, not a training run
        decision = Decision(False, "error", "", "")
    _count(decision.path)
    return decision.equal


def warm_up(workers: Optional[int] = None) -> None:
    """Start the math-verify workers now (optionally `workers` of them) instead of on the first hard check."""
    pool = grading_worker.set_workers(workers) if workers else grading_worker.get_pool()
    pool.warm_up()


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


def grade(completion: str, problem, fmt: Union[Format, str], timeout: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Grade one completion against `problem.answer`: the call rewards and evaluation share."""
    parsed = parse_completion(completion, _as_format(fmt))
    correct = is_equivalent(parsed.answer, problem.answer, timeout) if parsed.answer else False
    return Verdict(answer=parsed.answer, correct=correct, well_formed=parsed.well_formed)


def grade_main(pred: str, gold: str, timeout: float = DEFAULT_TIMEOUT_S) -> int:
    """`mathgrpo grade --pred P --gold G`: print the verdict, each side's reading and the deciding path."""
    t0 = time.monotonic()
    try:
        d = decide(pred, gold, timeout)
    except Exception as exc:
        d = Decision(False, "error", "", "", f"{type(exc).__name__}: {exc}")
    ms = (time.monotonic() - t0) * 1000
    print(f"verdict: {'EQUIVALENT' if d.equal else 'NOT EQUIVALENT'}")
    print(f"pred:    {pred!r} -> {d.pred_form}")
    print(f"gold:    {gold!r} -> {d.gold_form}")
    print(f"decided: {d.path}{f' ({d.note})' if d.note else ''} in {ms:.1f} ms")
    return 0
