"""Data sources: every source yields `Problem`s; bad rows are counted and reported with where they are.

`load_source(spec, ...)` is the one entry point. Specs:
  gsm8k, math500[@split]          bundled copies (offline); gsm8k has train/test, math500 test only
  hub:<id>[:config][@split]       Hugging Face `datasets`, with column maps for known sets (data/hub.py)
  path/to/file.{jsonl,json,parquet,csv}   local files (data/files.py)
  procedural:<name>[@split]       reasoning-gym generators, or the built-in `arith` task
A `@split` in the spec overrides the `split` argument.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional

from . import arith, bundled, files, hub, procedural
from .problem import BadRow, DataError, LoadReport, Problem, as_dict
from .solutions import sft_text

__all__ = ["BadRow", "DataError", "LoadReport", "Problem", "as_dict", "load_configured", "load_source", "locate_source",
           "sft_text", "take_subset"]


def take_subset(problems: list, limit: Optional[int], seed: int) -> list:
    """`limit` problems: shuffle a copy with `random.Random(seed)`, keep the first `limit`.

    Deterministic for a given seed and input order; a larger limit keeps a smaller one's problems
    as its prefix. None keeps every problem in source order.
    """
    if limit is None:
        return problems
    if limit < 0:
        raise DataError(f"limit={limit} must be >= 0 (or None for every problem)")
    shuffled = list(problems)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:limit]


def _with_split(spec: str, split: str) -> tuple:
    """(name, split) from `name[@split]`."""
    name, at, spec_split = spec.partition("@")
    return name, spec_split if at else split


def _load_arith(split: str) -> LoadReport:
    """The built-in arith task's fixed split (held-out sets drawn with seed 0)."""
    train, dev, test = arith.split(seed=0)
    problems = {"train": train, "dev": dev, "test": test}.get(split)
    if problems is None:
        raise DataError(f"procedural:arith has splits train, dev, test (not {split!r})")
    return LoadReport(source=f"procedural:arith@{split}", problems=list(problems))


def _unknown_source(spec: str) -> DataError:
    """The error for a spec that names no kind of source, with the kinds there are."""
    return DataError(f"unknown data source {spec!r}; use {', '.join(bundled.SETS)}, hub:<id>[:config][@split], "
                     f"a {'/'.join(files.SUFFIXES)} file, or procedural:<name>")


def _dispatch(spec: str, split: str, fields: dict, size: int, seed: int, strict: bool,
              hub_root: Optional[str], cache_dir: Optional[str]) -> LoadReport:
    """The report of the loader that `spec` names, before any subset."""
    if spec.startswith("hub:"):
        return hub.load(spec[len("hub:"):], split=split, strict=strict, hub_root=hub_root, cache_dir=cache_dir, **fields)
    if spec.startswith("procedural:"):
        name, split = _with_split(spec[len("procedural:"):], split)
        if name == "arith":
            return _load_arith(split)
        return procedural.load(name, split=split, size=size, seed=seed, strict=strict)
    name, bundled_split = _with_split(spec, split)
    if name in bundled.SETS:
        return bundled.load(name, bundled_split, strict=strict)
    if Path(spec).suffix or Path(spec).exists():
        return files.load(spec, strict=strict, **fields)
    raise _unknown_source(spec)


def locate_source(spec: str, split: str) -> str:
    """Where `spec` (see the module docstring) comes from, in a few words, checked in seconds without reading rows:
    names and splits, a local file's path, a hub data set in the caches or on a hub that answers. Raises
    DataError that says what to pass when it names nothing to be had."""
    from ..hubcheck import hub_status

    name, want = _with_split(spec, split)
    if spec.startswith("hub:"):
        dataset_id = hub.parse_spec(spec[len("hub:"):], split)[0]
        path = hub.resolve_path(dataset_id, None)
        if Path(path).is_dir():
            return f"local folder {path}"
        found, problem = hub_status(dataset_id, "dataset")
        if problem:
            raise DataError(problem)
        return found
    if spec.startswith("procedural:"):
        gen = name[len("procedural:"):]
        if want not in procedural.SPLITS:
            raise DataError(f"{spec} has splits {', '.join(procedural.SPLITS)} (not {want!r})")
        if gen != "arith":
            procedural.check_name(gen)
        return "generated"
    if name in bundled.SETS:
        if want not in bundled.SETS[name][1]:
            bundled.load(name, want)  # raises the DataError that names the right split
        return f"bundled ({want} split)"
    if Path(spec).suffix or Path(spec).exists():
        return f"file {files.check_path(spec)}"
    raise _unknown_source(spec)


def default_split(spec: str) -> str:
    """The split `mathgrpo data show` reads when none is given: a bundled set's only split, else train."""
    name = spec.partition("@")[0]
    return bundled.default_split(name) if name in bundled.SETS else "train"


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
    hub_root: Optional[str] = None,
    cache_dir: Optional[str] = None,
) -> LoadReport:
    """Load problems from `spec` (see the module docstring).

    The *_field arguments name columns of local files and hub sets; `size` and `seed` drive
    procedural generators (seed also picks the `limit` subset, see take_subset); `strict` turns
    the first bad row into a DataError; `hub_root` is a folder of local copies of hub sets
    (`<hub_root>/<owner>/<name>`) and `cache_dir` the `datasets` cache (see data/hub.py).
    """
    fields = {"question_field": question_field, "answer_field": answer_field, "solution_field": solution_field}
    report = _dispatch(spec, split, fields, size, seed, strict, hub_root, cache_dir)
    report.problems = take_subset(report.problems, limit, seed)
    return report


def load_configured(data: Any, spec: str, split: str, limit: Optional[int], seed: int) -> LoadReport:
    """`load_source` with a run's data settings (`data`: its DataConfig): column names, procedural size, strictness."""
    return load_source(
        spec, split=split, question_field=data.question_field, answer_field=data.answer_field,
        solution_field=data.solution_field, size=data.size, seed=seed, limit=limit, strict=data.strict,
    )
