"""`mathgrpo grade --pred P --gold G`: the grader's verdict on one pair, each side's reading and the rule that decided."""

from __future__ import annotations

import time
from typing import Optional

from .. import api
from ..grading.client import GradingError


def grade(pred: str, gold: str, rel_tol: Optional[float] = None) -> int:
    """Print the decision and how long it took; 1 when the grader failed, 2 for a tolerance out of range."""
    t0 = time.monotonic()
    try:
        d = api.grade(pred, gold, rel_tol)
    except GradingError as exc:
        print(f"error: {exc}")
        return 1
    except ValueError as exc:  # a tolerance or time limit out of range
        print(f"error: {exc}")
        return 2
    ms = (time.monotonic() - t0) * 1000
    print(f"verdict: {'EQUIVALENT' if d.equal else 'NOT EQUIVALENT'}")
    print(f"pred:    {pred!r} -> {d.pred_form}")
    print(f"gold:    {gold!r} -> {d.gold_form}")
    print(f"decided: {d.path}{f' ({d.note})' if d.note else ''} in {ms:.1f} ms")
    return 0
