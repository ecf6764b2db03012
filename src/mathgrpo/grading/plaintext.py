"""Plain-text answers, the way programs and calculators write them (`sqrt(x)/2`, `x**2 + 3*x`,
`abs(x-1)`, `cos(x)^2`, `log(x, 10)`, `m*g*h`, `v_0*t`, `v == u + a*t`, `(-inf, 3]`), read into sympy.

math-verify reads LaTeX; on such text its expression reader picks out a fragment (`sqrt(2*r/(p*r-3))`
and `sqrt(3*r/(p*r-3))` came out equal). This module reads the whole text with a tokenizer and a
precedence-climbing parser over a fixed table of names, and builds the sympy objects itself: nothing
is passed to `eval`, `sympify` or `parse_expr`. It runs inside the worker's executors (under their
hard time limit); `looks_plain` is a cheap test anyone may call.

Conventions (those of sympy and of isaacphysics' checker): `^` and `**` are powers; `log(x)` and
`ln(x)` are natural, `log(x, b)` and `log_b(x)` have base b; `e` is Euler's number and `pi`, `inf`
the constants; a name that is not a function, constant or Greek letter is a product of its letters
(`mgh`, `xyz`; `DeltaV` = Delta*V); `m_1`, `v_zmf` are single symbols; juxtaposition multiplies
(`2x`, `(a)(b)`, `sqrt(3)m`); `=` and `==` make equations; `a, b`, `a or b` lists; `(a, b]` an interval.
Case is kept (`M` and `m` are different variables).
"""

from __future__ import annotations

import re
from typing import Optional

MAX_CHARS = 2_000
MAX_TOKENS = 600
MAX_DEPTH = 60
MAX_INTEGER_POWER = 1_000  # an integer power or factorial beyond this is refused, as the judge's guards do

_FUNCTION_WORDS = (
    "sqrt|cbrt|abs|exp|ln|log|log10|log2|factorial|floor|ceil|ceiling|cosec|"
    "a?(?:sin|cos|tan|sec|csc|cot)h?|arc(?:sin|cos|tan|sec|csc|cot)h?|ar(?:sin|cos|tan)h"
)
_PLAIN_MARK = re.compile(
    rf"\*|==|(?<![A-Za-z])(?:{_FUNCTION_WORDS})\s*\(|(?<![A-Za-z])(?:pi|inf|infinity)(?![A-Za-z])|\d[eE][+-]?\d",
    re.IGNORECASE,
)
_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z]+(?:_(?:[A-Za-z0-9]+))?)"
    r"|(?P<op>\*\*|==|<=|>=|!=|\+-|[-+*/^(),<>=!|\[\]±≤≥]))"
)
_GREEK = (
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi omicron "
    "rho sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega"
).split()
_GREEK_IN_WORDS = sorted((g for g in _GREEK if len(g) >= 3), key=len, reverse=True)
_RELATIONS = {"=": "Eq", "==": "Eq", "<": "Lt", ">": "Gt", "<=": "Le", ">=": "Ge", "≤": "Le", "≥": "Ge", "!=": "Ne"}
_WORD_SEPARATORS = {"or", "and"}


class PlainTextError(ValueError):
    """The text is not a plain-text answer this reader understands."""


def looks_plain(text: str) -> bool:
    """Whether `text` is written the plain-text way (`*`, `**`, `==`, `sqrt(`, `pi`, `1e-3`) and not in LaTeX."""
    return len(text) <= MAX_CHARS and not re.search(r"[\\{}$]", text) and bool(_PLAIN_MARK.search(text))


def tokenize(text: str) -> list:
    """(kind, text) tokens of `text`; kind is num, name or op. PlainTextError on anything else."""
    tokens, pos, text = [], 0, text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise PlainTextError(f"unexpected {text[pos:pos + 10]!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
        if len(tokens) > MAX_TOKENS:
            raise PlainTextError("too long")
    return tokens


def _functions() -> dict:
    """Function names (lower case) -> a callable building the sympy object."""
    import sympy as sp

    table = {
        "sqrt": sp.sqrt, "cbrt": sp.cbrt, "abs": sp.Abs, "exp": sp.exp, "ln": sp.log, "log": sp.log,
        "log10": lambda x: sp.log(x, 10), "log2": lambda x: sp.log(x, 2), "factorial": _factorial,
        "floor": sp.floor, "ceil": sp.ceiling, "ceiling": sp.ceiling, "cosec": sp.csc,
    }
    for name in ("sin", "cos", "tan", "sec", "csc", "cot"):
        table[name] = getattr(sp, name)
        table[name + "h"] = getattr(sp, name + "h")
        table["a" + name] = table["arc" + name] = getattr(sp, "a" + name)
        table["a" + name + "h"] = table["arc" + name + "h"] = getattr(sp, "a" + name + "h")
    for name in ("sin", "cos", "tan"):
        table["ar" + name + "h"] = getattr(sp, "a" + name + "h")
    return table


def _factorial(n):
    """n! with the same bound on integers as the judge's guard."""
    import sympy as sp

    if n.is_Integer and abs(int(n)) > MAX_INTEGER_POWER:
        raise PlainTextError("factorial too large")
    return sp.factorial(n)


class _Parser:
    """Precedence climbing over the tokens: list > relation > sum > product > unary > power > postfix > atom."""

    def __init__(self, tokens: list) -> None:
        import sympy as sp

        self.sp, self.tokens, self.pos, self.depth, self.bars = sp, tokens, 0, 0, 0
        self.functions = _functions()

    # -- token helpers
    def peek(self, ahead: int = 0) -> tuple:
        i = self.pos + ahead
        return self.tokens[i] if i < len(self.tokens) else ("end", "")

    def take(self) -> tuple:
        token = self.peek()
        self.pos += 1
        return token

    def expect(self, text: str) -> None:
        if self.take()[1] != text:
            raise PlainTextError(f"expected {text!r}")

    def deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise PlainTextError("nested too deep")

    # -- grammar
    def answer(self):
        """The whole text: a list of relations (`,`, `or`, `and`), an interval, or one relation."""
        interval = self.interval()
        if interval is not None:
            return interval
        items = [self.relation()]
        while self.peek()[1] == "," or (self.peek()[0] == "name" and self.peek()[1] in _WORD_SEPARATORS):
            self.take()
            items.append(self.relation())
        if self.peek()[0] != "end":
            raise PlainTextError(f"unexpected {self.peek()[1]!r}")
        if len(items) == 1:
            return items[0]
        if all(isinstance(x, self.sp.Equality) for x in items):
            return self.sp.FiniteSet(*items)
        return self.sp.Tuple(*items)

    def interval(self):
        """`(a, b]` and relatives when they are the whole text (read as math-verify reads `(1, 2)`: an
        interval when both ends are real, else a pair), or None when the text is not one."""
        if len(self.tokens) < 5 or self.tokens[0][1] not in ("(", "[") or self.tokens[-1][1] not in (")", "]"):
            return None
        depth = commas = 0
        for i, (_, text) in enumerate(self.tokens):
            depth += text in ("(", "[")
            depth -= text in (")", "]")
            if depth == 0 and i < len(self.tokens) - 1:
                return None  # the first bracket closes before the end: `(a)(b)`
            commas += depth == 1 and text == ","
        if commas != 1:
            return None
        first, last = self.tokens[0][1], self.tokens[-1][1]
        self.pos = 1
        a = self.relation()
        self.expect(",")
        b = self.relation()
        self.expect(last)
        if a.is_extended_real and b.is_extended_real:
            return self.sp.Interval(a, b, first == "(", last == ")")
        if (first, last) == ("(", ")"):
            return self.sp.Tuple(a, b)
        raise PlainTextError("an interval needs real ends")

    def relation(self):
        """A sum, or a chain of sums joined by relations (`a < x <= b` is an And)."""
        left = self.sum()
        parts = []
        while self.peek()[1] in _RELATIONS:
            op = _RELATIONS[self.take()[1]]
            right = self.sum()
            parts.append(getattr(self.sp, op)(left, right, evaluate=False))
            left = right
        if not parts:
            return left
        return parts[0] if len(parts) == 1 else self.sp.And(*parts, evaluate=False)

    def sum(self):
        """Terms joined by + and -, and `a ± b` (the set {a + b, a - b})."""
        value = self.product()
        while self.peek()[1] in ("+", "-", "±", "+-"):
            op = self.take()[1]
            term = self.product()
            if op in ("±", "+-"):
                return self.sp.FiniteSet(value + term, value - term)
            value = value + term if op == "+" else value - term
        return value

    def starts_factor(self) -> bool:
        """Whether the next token can begin a factor written right after another (implicit product)."""
        kind, text = self.peek()
        if kind in ("num", "name"):
            return text not in _WORD_SEPARATORS
        return text == "(" or (text == "|" and self.bars == 0)

    def product(self):
        """Factors joined by *, / or nothing (`2x`, `(a)(b)`)."""
        value = self.unary()
        while True:
            text = self.peek()[1]
            if text in ("*", "/"):
                self.take()
                factor = self.unary()
                value = value * factor if text == "*" else value / factor
            elif self.starts_factor():
                value = value * self.unary()
            else:
                return value

    def unary(self):
        """A signed power (`-x^2` is -(x^2))."""
        text = self.peek()[1]
        if text in ("-", "+"):
            self.take()
            self.deeper()
            value = self.unary()
            self.depth -= 1
            return -value if text == "-" else value
        return self.power()

    def power(self):
        """`a^b`, `a**b`, right-associative; the exponent may be signed (`2^-3`)."""
        base = self.postfix()
        if self.peek()[1] in ("^", "**"):
            self.take()
            self.deeper()
            exponent = self.unary()
            self.depth -= 1
            return self.pow(base, exponent)
        return base

    def pow(self, base, exponent):
        """base**exponent, refusing integer powers sympy would have to build digit by digit."""
        if exponent.is_Integer and abs(int(exponent)) > MAX_INTEGER_POWER and base.is_number and base not in (1, -1, 0):
            raise PlainTextError("exponent too large")
        return self.sp.Pow(base, exponent)

    def postfix(self):
        """An atom with `!` after it (factorial)."""
        value = self.atom()
        while self.peek()[1] == "!":
            self.take()
            value = _factorial(value)
        return value

    def atom(self):
        """A number, a name (with a call), a bracketed sum or `|...|`."""
        kind, text = self.take()
        if kind == "num":
            return self.number(text)
        if kind == "name":
            return self.name(text)
        if text in ("(", "["):
            self.deeper()
            value = self.relation()
            self.expect(")" if text == "(" else "]")
            self.depth -= 1
            return value
        if text == "|":
            self.deeper()
            self.bars += 1
            value = self.sum()
            self.bars -= 1
            self.expect("|")
            self.depth -= 1
            return self.sp.Abs(value)
        raise PlainTextError(f"unexpected {text!r}" if text else "unexpected end")

    def number(self, text: str):
        """An integer is exact; a decimal or `1.5e-3` is a Float that keeps the digits written."""
        if re.fullmatch(r"\d+", text):
            return self.sp.Integer(text)
        mantissa, _, exponent = text.lower().partition("e")
        if exponent and abs(int(exponent)) > MAX_INTEGER_POWER:
            raise PlainTextError("exponent too large")
        if "." not in mantissa:  # 3e8: an integer times a power of ten, exact
            return self.sp.Integer(mantissa) * self.sp.Integer(10) ** int(exponent)
        return self.sp.Float(text, max(15, len(mantissa)))

    def name(self, text: str):
        """A function call, a constant, a subscripted symbol or a product of letters."""
        base, _, sub = text.partition("_")
        lower = text.lower()
        if lower in self.functions and not sub:
            return self.call(self.functions[lower])
        if base.lower() == "log" and sub.isdigit():
            return self.call(lambda x: self.sp.log(x, int(sub)))
        constants = {"pi": self.sp.pi, "e": self.sp.E, "inf": self.sp.oo, "infinity": self.sp.oo, "oo": self.sp.oo}
        if text in constants:
            return constants[text]
        if sub:
            pieces = _letters(base)
            return self.product_of(pieces[:-1]) * self.sp.Symbol(f"{pieces[-1]}_{sub}")
        return self.product_of(_letters(text))

    def product_of(self, pieces: list):
        """The product of the symbols named by `pieces` (`e` alone is Euler's number, as in LaTeX)."""
        value = self.sp.Integer(1)
        for piece in pieces:
            value = value * (self.sp.E if piece == "e" else self.sp.Symbol(piece))
        return value

    def call(self, function):
        """Apply a function to its bracketed arguments, to `^n(...)` (`sin^2(x)`), or to the next power (`sin x`)."""
        exponent = None
        if self.peek()[1] in ("^", "**") and self.peek(2)[1] == "(":
            self.take()
            exponent = self.postfix()
        if self.peek()[1] == "(":
            self.take()
            self.deeper()
            args = [self.relation()]
            while self.peek()[1] == ",":
                self.take()
                args.append(self.relation())
            self.expect(")")
            self.depth -= 1
        else:
            args = [self.power()]
        value = function(*args)
        return self.pow(value, exponent) if exponent is not None else value


def _letters(word: str) -> list:
    """A name split into the symbols it multiplies: Greek names whole, other letters one by one."""
    if word in _GREEK:
        return [word]
    pieces, i = [], 0
    while i < len(word):
        greek = next((g for g in _GREEK_IN_WORDS if word.startswith(g, i)), None)
        pieces.append(greek or word[i])
        i += len(greek) if greek else 1
    return pieces


def parse(text: str):
    """The sympy reading of a plain-text answer; PlainTextError when it is not one this module reads."""
    if len(text) > MAX_CHARS:
        raise PlainTextError("too long")
    tokens = tokenize(text)
    if not tokens:
        raise PlainTextError("empty")
    try:
        return _Parser(tokens).answer()
    except PlainTextError:
        raise
    except (TypeError, ValueError, ZeroDivisionError, AttributeError, RecursionError) as exc:  # sympy refusing an operation
        raise PlainTextError(f"{type(exc).__name__}: {exc}") from exc


def read(text: str) -> Optional[object]:
    """`parse(text)` for plain-text answers, None for any other text or one that does not parse."""
    if not looks_plain(text):
        return None
    try:
        return parse(text)
    except PlainTextError:
        return None
