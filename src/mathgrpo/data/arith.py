"""The built-in tiny task: two-digit addition and subtraction with column-wise worked solutions.

Operands are zero-padded so every prompt has the same length (`07+28=`); the worked solution
adds or subtracts column by column with the carry or borrow written out, e.g.
`7+8=15,0+2+1=3` for 07+28 = 35. A tiny model learns it from scratch in seconds on a CPU, which
makes it the subject of the default run and of the tests.
"""

from __future__ import annotations

import random

from .problem import Problem


def _add_steps(a: int, b: int) -> str:
    """Column-wise working of a + b: ones first, then tens with the carry."""
    ones = a % 10 + b % 10
    carry = ones // 10
    tens = a // 10 + b // 10 + carry
    return f"{a % 10}+{b % 10}={ones}," + (f"{a // 10}+{b // 10}+{carry}={tens}" if carry else f"{a // 10}+{b // 10}={tens}")


def _sub_steps(a: int, b: int) -> str:
    """Column-wise working of a - b: ones first (borrowing when needed), then tens."""
    borrow = int(a % 10 < b % 10)
    ones = a % 10 + 10 * borrow - b % 10
    tens = a // 10 - borrow - b // 10
    first = f"1{a % 10}-{b % 10}={ones}," if borrow else f"{a % 10}-{b % 10}={ones},"
    return first + (f"{a // 10}-1-{b // 10}={tens}" if borrow else f"{a // 10}-{b // 10}={tens}")


def make_problem(a: int, b: int, op: str) -> Problem:
    """One arith problem `a op b` with its worked solution (requires a >= b for '-')."""
    if op == "+":
        answer, steps = a + b, _add_steps(a, b)
    else:
        answer, steps = a - b, _sub_steps(a, b)
    question = f"{a:02d}{op}{b:02d}="
    return Problem(id=f"arith-{a:02d}{op}{b:02d}", question=question, answer=str(answer),
                   source="procedural:arith", solution=steps, meta={"a": a, "b": b, "op": op})


def all_problems() -> list:
    """Every distinct arith problem (10,000 sums and 5,050 differences)."""
    sums = [make_problem(a, b, "+") for a in range(100) for b in range(100)]
    diffs = [make_problem(a, b, "-") for a in range(100) for b in range(a + 1)]
    return sums + diffs


def split(seed: int = 0, test: int = 200, dev: int = 200) -> tuple:
    """(train, dev, test) problem lists: disjoint, drawn with `seed`, fixed for a given seed."""
    problems = all_problems()
    random.Random(seed).shuffle(problems)
    return problems[test + dev :], problems[test : test + dev], problems[:test]
