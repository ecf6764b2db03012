"""Grading: the one judge (`judge`), its worker (`client`, `worker`) with the rules it applies after
math-verify (`rules`; `readings`, `plaintext`, `spotcheck`, `numbers` beneath them) and the rewards
built on it.

`from mathgrpo.grading import grade, is_equivalent, stats` is the public way in; it stays stable
whichever module inside holds them.
"""

from .judge import GradingError, Verdict, extract_answer, grade, is_equivalent, reset_stats, stats

__all__ = ["GradingError", "Verdict", "extract_answer", "grade", "is_equivalent", "reset_stats", "stats"]
