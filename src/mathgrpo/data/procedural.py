"""Procedural problems from reasoning-gym: unlimited, offline, seeded (`procedural:<name>`).

`reasoning_gym.create_dataset(name, size=size, seed=...)` builds `size` problems, each with a
question, an answer and metadata (its scalar fields become Problem.meta). The split picks the seed: train uses
`seed` itself; dev and test use a seed derived from (split, seed) by SHA-256, so the three splits
are different draws, fixed for a given seed. Different draws can still share a problem when the
generator's space is small; nothing removes such overlaps. gsm_symbolic carries a GSM8K-style
worked solution (`answer_cot`), which becomes Problem.solution. Ids: `<name>-<split>-s<seed>-<i>`.
"""

from __future__ import annotations

import difflib
import hashlib

from .problem import DataError, LoadReport
from .rows import Columns, build_report

SPLITS = ("train", "dev", "test")
# Generators checked offline here (see tests/data/test_procedural.py); any registered name works.
SUGGESTED = ("basic_arithmetic", "chain_sum", "gsm_symbolic", "simple_equations", "fraction_simplification")
_COLUMNS = Columns("question", "answer", solution="solution", meta=None)


def split_seed(split: str, seed: int) -> int:
    """The generator seed for `split`: `seed` for train, a SHA-256-derived 31-bit seed otherwise."""
    if split == "train":
        return seed
    digest = hashlib.sha256(f"{split}/{seed}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def check_name(name: str) -> None:
    """DataError naming close matches when `name` is not a reasoning-gym generator."""
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise DataError(f"procedural:{name}: no such reasoning-gym generator; {hint}"
                        f"math ones include {', '.join(SUGGESTED)}, or the built-in procedural:arith")


def _create(name: str, size: int, seed: int):
    """The reasoning-gym data set; DataError naming close matches for an unknown generator."""
    import reasoning_gym

    check_name(name)
    try:
        return reasoning_gym.create_dataset(name, size=size, seed=seed)
    except Exception as err:  # generator configs validate with assertions and ValueErrors
        raise DataError(f"procedural:{name}: reasoning-gym cannot build it (size={size}, seed={seed}): {err}") from None


def _row(entry: dict) -> dict:
    """A reasoning-gym entry as a row: its metadata's scalar fields (they become Problem.meta),
    question, answer and the worked solution if it has one."""
    meta = dict(entry.get("metadata") or {})
    row = {k: v for k, v in meta.items() if k != "answer_cot"}
    row.update(question=entry.get("question"), answer=entry.get("answer"), solution=_solution(meta.get("answer_cot")))
    return row


def _solution(cot):
    """The reasoning of a GSM8K-style `answer_cot` (text before `####`), or None."""
    if not isinstance(cot, str) or not cot.strip():
        return None
    return cot.rpartition("####")[0] or cot


def load(name: str, *, split: str = "train", size: int = 10000, seed: int = 0, strict: bool = False) -> LoadReport:
    """`size` problems from the reasoning-gym generator `name` for `split` (see the module docstring)."""
    if split not in SPLITS:
        raise DataError(f"procedural:{name} has splits {', '.join(SPLITS)} (not {split!r})")
    if size < 1:
        raise DataError(f"procedural:{name}: size={size} must be at least 1")
    dataset = _create(name, size, split_seed(split, seed))
    label = f"procedural:{name}@{split}"
    rows = [(f"{label}[{i}]", _row(dataset[i])) for i in range(len(dataset))]
    return build_report(label, rows, _COLUMNS, id_prefix=f"{name}-{split}-s{seed}", strict=strict)
