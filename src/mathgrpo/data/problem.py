"""The one problem type every source yields, and the bad-row report every loader fills."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import Error


@dataclass(frozen=True)
class Problem:
    """One math problem: what is asked, the gold final answer, and where it came from.

    `solution` is a worked solution in the source's own words (reasoning only, without the final
    answer line) where the source has one; `meta` holds source extras (MATH subject and level...).
    """

    id: str
    question: str
    answer: str
    source: str
    solution: Optional[str] = None
    meta: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class BadRow:
    """A row that could not become a Problem: where it is and why."""

    where: str  # "file.jsonl:17" or "hub:openai/gsm8k@train row 17"
    reason: str


@dataclass
class LoadReport:
    """Problems loaded from one source plus the rows that were skipped."""

    source: str
    problems: list = field(default_factory=list)
    bad_rows: list = field(default_factory=list)

    def summary(self) -> str:
        """One line: how many loaded, how many skipped and the first few reasons."""
        text = f"{self.source}: {len(self.problems)} problems"
        if self.bad_rows:
            first = "; ".join(f"{b.where}: {b.reason}" for b in self.bad_rows[:3])
            more = f" (+{len(self.bad_rows) - 3} more)" if len(self.bad_rows) > 3 else ""
            text += f", {len(self.bad_rows)} bad rows skipped: {first}{more}"
        return text


class DataError(Error, ValueError):
    """A source cannot be read, or a bad row was found with strict=True; the message says where."""


def as_dict(problem: Problem) -> dict[str, Any]:
    """A Problem as a JSON-ready dict."""
    return {
        "id": problem.id,
        "question": problem.question,
        "answer": problem.answer,
        "source": problem.source,
        "solution": problem.solution,
        "meta": dict(problem.meta),
    }
