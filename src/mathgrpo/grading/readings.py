"""Our own sympy reading of an answer, beside math-verify's, for the rules of `rules.py`.

math-verify lower-cases every symbol (`GMm` and `Gmm` read the same, `M - m` reads 0) and reads
plain-text expressions only in fragments. Where either matters (`case_matters`, `plaintext.looks_plain`),
the worker reads both sides again: plain text with `plaintext.parse`, LaTeX with the same parser
math-verify uses (latex2sympy) but with case kept. Both readings then get the same symbol names
(`canonical`): `v_{0}`, `v_0` and `\\theta`/`theta` agree, assumptions dropped.

`case_matters` is plain Python (the judge's string key uses it); the rest imports sympy and runs
in the worker's executors.
"""

from __future__ import annotations

import re
from typing import Optional

_COMMAND = re.compile(r"\\[a-zA-Z]+")
_MATH_CHAR = re.compile(r"[\d+\-*/^_=<>(){}\\]")


def case_matters(text: str) -> bool:
    """Whether the letters of a mathematical answer distinguish variables by case (`GMm`, `M-m`, `T/t`):
    it has math in it, and some letter outside LaTeX commands appears in both cases."""
    if not _MATH_CHAR.search(text):
        return False  # a word or a name: `Evelyn` = `evelyn`
    letters = set(re.sub(r"[^a-zA-Z]", "", _COMMAND.sub(" ", text)))
    return any(c.islower() and c.upper() in letters for c in letters)


def _normalised(text: str, units: bool) -> str:
    """`text` as math-verify normalises LaTeX before parsing it (with or without dropping units)."""
    from latex2sympy2_extended.math_normalization import NormalizationConfig, normalize_latex

    config = NormalizationConfig(basic_latex=True, units=units, malformed_operators=True, nits=True, boxed="all", equations=False)
    return normalize_latex(text, config)


def drops_a_letter(text: str) -> bool:
    """Whether math-verify's normalisation drops a trailing lone letter of `text` as a unit
    (`\\rho g` -> `\\rho`, `v_0t` -> `v_0`): in an algebraic answer that letter is a variable."""
    kept, dropped = _normalised(text, units=False), _normalised(text, units=True)
    return kept != dropped and re.fullmatch(r"\s*[A-Za-z]\s*", kept[len(dropped.rstrip()):] or "x x") is not None and bool(re.search(r"[A-Za-z]", dropped))


def latex_keep_case(text: str):
    """`text` (a bare LaTeX answer) read by latex2sympy as math-verify reads it, but with the case of
    symbols kept and no trailing "units" dropped; None when it does not parse."""
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig, latex2sympy
    from math_verify.grader import should_treat_as_complex

    latex = _normalised(text, units=False)
    try:
        return latex2sympy(latex, is_real=not should_treat_as_complex(latex), convert_degrees=False,
                           normalization_config=None, conversion_config=ConversionConfig(lowercase_symbols=False))
    except Exception:  # latex2sympy raises its own parse errors (and sympy's); no reading then
        return None


def canonical(expr, lower: bool = False):
    """`expr` with every symbol renamed to its plain form (`v_{0}` -> `v_0`, no assumptions; lower
    case when `lower`), so that readings from different parsers compare."""
    import sympy as sp

    if not isinstance(expr, sp.Basic):
        return expr
    rename = {}
    for s in expr.free_symbols:
        if isinstance(s, sp.Symbol):
            name = re.sub(r"[{}\\\s]", "", s.name)
            rename[s] = sp.Symbol(name.lower() if lower else name)
    if not rename:
        return expr
    renamed = expr.xreplace(rename)
    if type(renamed) is not type(expr):  # Eq(x, {-3, 3}) (`x = \\pm 3`) evaluates to False when rebuilt
        with sp.evaluate(False):
            renamed = expr.xreplace(rename)
    return renamed


def exact(expr):
    """`expr` with each decimal replaced by the fraction it writes (`0.7` -> 7/10), for exact algebra."""
    import sympy as sp

    if not isinstance(expr, sp.Basic):
        return expr
    floats = expr.atoms(sp.Float)
    return expr.xreplace({f: sp.Rational(str(f)) for f in floats}) if floats else expr


def own(text: str) -> tuple:
    """(reading, how) of one side: ("plain text" via `plaintext.parse`) or ("case kept" via
    `latex_keep_case`); (None, "") when neither reads it."""
    from . import plaintext

    plain = plaintext.read(text)
    if plain is not None:
        return plain, "plain text"
    latex = latex_keep_case(text)
    return (latex, "case kept") if latex is not None else (None, "")


def first(parsed: list) -> Optional[object]:
    """The sympy object of a math-verify parse (its first item), or None."""
    return parsed[0] if parsed else None
