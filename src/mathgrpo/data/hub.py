"""Hugging Face hub data sets through `datasets`: `hub:<id>[:config][@split]`.

Known sets have column maps (KNOWN); any other set needs question_field and answer_field.

Where the data comes from, first match wins:
  1. `<hub_root>/<id>` when that folder exists; hub_root is the argument, else the environment
     variable MATHGRPO_HUB_ROOT. A folder laid out like the hub repo (its README.md with the
     `configs:` block, and the data files) loads exactly as the hub copy would, offline.
  2. `<id>` itself when it is an existing folder (`hub:/data/openai/gsm8k`); its last two path
     parts pick the column map.
  3. The hub id: `datasets` reads its local cache first and honours HF_HUB_OFFLINE=1.
Bad rows are reported as `hub:<id>[:config]@<split>[i]` with the 0-based row index.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .problem import DataError, LoadReport
from .rows import Columns, build_report, detect_answer_style, pick_field


@dataclass(frozen=True)
class HubSet:
    """A known hub data set: its column map, a short name for ids, and its split/config defaults."""

    columns: Columns
    name: str
    default_config: Optional[str] = None
    split_aliases: dict = field(default_factory=dict)  # the split asked for -> the split it has


KNOWN = {
    "openai/gsm8k": HubSet(Columns("question", "answer", answer_style="gsm8k"), "gsm8k", default_config="main"),
    "HuggingFaceH4/MATH-500": HubSet(
        Columns("problem", "answer", solution="solution", meta=("subject", "level", "unique_id"), id_field="unique_id"),
        "math500",
    ),
    # `solution` holds the final answer here, not a worked solution.
    "open-r1/DAPO-Math-17k-Processed": HubSet(
        Columns("prompt", "solution", meta=("data_source",)), "dapo17k", default_config="all"
    ),
    # Its only split is `cot`; asking for train gets it.
    "unsloth/OpenMathReasoning-mini": HubSet(
        Columns("problem", "expected_answer", solution="generated_solution",
                meta=("problem_type", "problem_source", "generation_model", "inference_mode")),
        "omr-mini",
        split_aliases={"train": "cot"},
    ),
}
_KNOWN_LOWER = {k.lower(): k for k in KNOWN}


def parse_spec(rest: str, split: str) -> tuple:
    """(id, config or None, split) from `<id>[:config][@split]`; `@split` overrides `split`."""
    rest, at, spec_split = rest.rpartition("@") if "@" in rest else (rest, "", "")
    dataset_id, _, config = rest.partition(":")
    if not dataset_id:
        raise DataError("hub: needs a data set id, e.g. hub:openai/gsm8k:main@test")
    return dataset_id, config or None, spec_split if at else split


def known_set(dataset_id: str) -> Optional[HubSet]:
    """The known set for an id or a local folder ending in one (case-insensitive), else None."""
    key = _KNOWN_LOWER.get(dataset_id.lower()) or _KNOWN_LOWER.get("/".join(Path(dataset_id).parts[-2:]).lower())
    return KNOWN[key] if key else None


def resolve_path(dataset_id: str, hub_root: Optional[str]) -> str:
    """What to hand to `datasets.load_dataset` for `dataset_id` (see the module docstring)."""
    root = hub_root or os.environ.get("MATHGRPO_HUB_ROOT")
    if root and (Path(root).expanduser() / dataset_id).is_dir():
        return str(Path(root).expanduser() / dataset_id)
    return dataset_id


def open_split(path: str, config: Optional[str], split: str, label: str, cache_dir: Optional[str]):
    """`datasets.load_dataset(path, config, split)`; its errors become a DataError saying what to do."""
    import datasets

    try:
        return datasets.load_dataset(path, name=config, split=split, cache_dir=cache_dir)
    except Exception as err:  # datasets raises many types (ValueError, ConnectionError, FileNotFoundError...)
        hint = ("" if Path(path).is_dir() else
                f" Offline? Put a copy laid out like the hub repo in MATHGRPO_HUB_ROOT/{path} or name a local folder.")
        raise DataError(f"{label}: cannot load {path!r} (config {config!r}, split {split!r}): {err}.{hint}") from None


def _columns(hub_set: Optional[HubSet], rows: list, found: list, label: str, fields: dict) -> Columns:
    """The column map: the known one with any fields given overriding it, or the given fields."""
    if hub_set is None and (fields["question_field"] is None or fields["answer_field"] is None):
        raise DataError(f"{label} is not a known set ({', '.join(KNOWN)}); pass question_field= and answer_field= "
                        f"(columns found: {', '.join(found)})")
    base = hub_set.columns if hub_set else Columns("", "", meta=None)
    question = pick_field(fields["question_field"] or base.question, (), found, "question_field", label)
    answer = pick_field(fields["answer_field"] or base.answer, (), found, "answer_field", label)
    solution_name = fields["solution_field"] or base.solution
    solution = pick_field(solution_name, (), found, "solution_field", label) if solution_name else None
    style = base.answer_style if hub_set and answer == base.answer else detect_answer_style(rows, answer)
    return dataclasses.replace(base, question=question, answer=answer, solution=solution, answer_style=style)


def _id_prefix(hub_set: Optional[HubSet], dataset_id: str, config: Optional[str], split: str, cols: Columns) -> str:
    """Ids: `<short name>[-<config>]-<split>-<i>` (config left out when it is the default), or
    `<short name>-<id field>` for sets with ids of their own (MATH-500's unique_id)."""
    name = hub_set.name if hub_set else dataset_id
    if cols.id_field:
        return name
    default = hub_set.default_config if hub_set else None
    return "-".join([name] + ([config] if config and config != default else []) + [split])


def load(rest: str, *, split: str = "train", question_field: Optional[str] = None, answer_field: Optional[str] = None,
         solution_field: Optional[str] = None, strict: bool = False, hub_root: Optional[str] = None,
         cache_dir: Optional[str] = None) -> LoadReport:
    """Problems from `hub:<rest>` (see the module docstring)."""
    dataset_id, config, split = parse_spec(rest, split)
    hub_set = known_set(dataset_id)
    if hub_set:
        config = config or hub_set.default_config
        split = hub_set.split_aliases.get(split, split)
    label = f"hub:{dataset_id}{':' + config if config else ''}@{split}"
    table = open_split(resolve_path(dataset_id, hub_root), config, split, label, cache_dir)
    rows = [(f"{label}[{i}]", row) for i, row in enumerate(table.to_list())]
    fields = {"question_field": question_field, "answer_field": answer_field, "solution_field": solution_field}
    cols = _columns(hub_set, rows, list(table.column_names), label, fields)
    return build_report(label, rows, cols, id_prefix=_id_prefix(hub_set, dataset_id, config, split, cols), strict=strict)
