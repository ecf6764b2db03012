"""The bundled copies of GSM8K and MATH-500 (offline; licenses in bundled/NOTICE).

gsm8k: splits train (7,473) and test (1,319); gold is the text after the last `####` (commas
removed), the worked solution the text before it without calculator annotations.
math500: split test only (500); gold is the `answer` field, the worked solution the `solution`
field with its `\\boxed{}` unwrapped; meta holds subject, level and unique_id.
Ids: `gsm8k-<split>-<0-based row>`, `math500-<unique_id>`.
"""

from __future__ import annotations

from pathlib import Path

from .files import read_jsonl
from .problem import DataError, LoadReport
from .rows import Columns, build_report

BUNDLED_DIR = Path(__file__).with_name("bundled")

GSM8K = Columns(question="question", answer="answer", answer_style="gsm8k")
MATH500 = Columns(question="problem", answer="answer", solution="solution",
                  meta=("subject", "level", "unique_id"), id_field="unique_id")

# name -> (columns, {split: file})
SETS = {
    "gsm8k": (GSM8K, {"train": "gsm8k_train.jsonl", "test": "gsm8k_test.jsonl"}),
    "math500": (MATH500, {"test": "math500_test.jsonl"}),
}


def default_split(name: str) -> str:
    """The split a bundled set is read from when none is asked for: train, else its only one."""
    files = SETS[name][1]
    return "train" if "train" in files else next(iter(files))


def load(name: str, split: str = "train", strict: bool = False) -> LoadReport:
    """Problems of the bundled set `name` (gsm8k or math500), split `split`."""
    cols, files = SETS[name]
    if split not in files:
        only = " and ".join(files)
        first = next(iter(files))
        raise DataError(f"{name} has split {only} only (not {split!r}); name the split in the source: "
                        f"{name}@{first} (as data.source, --bench or `mathgrpo data show {name}@{first}`)")
    path = BUNDLED_DIR / files[split]
    if not path.is_file():
        raise DataError(f"bundled file {path} is missing; reinstall mathgrpo")
    rows = read_jsonl(path, f"bundled/{files[split]}")
    prefix = name if cols.id_field else f"{name}-{split}"
    return build_report(f"{name}@{split}", rows, cols, id_prefix=prefix, strict=strict)
