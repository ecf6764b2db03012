"""Local files: `.jsonl`, `.json`, `.parquet`, `.csv`, one problem per row.

Columns are named with question_field / answer_field / solution_field, or found by common names
(question/problem/prompt, answer/final_answer/expected_answer, solution/generated_solution). An
answer column holding GSM8K-style solutions (`... #### 42`) is split into solution and gold.
Bad rows are reported as `path:N` (1-based line; `.jsonl`, `.csv`) or `path[i]` (0-based record;
`.json`, `.parquet`). Problem ids are `<file stem>-<0-based row index>`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

from .problem import DataError, LoadReport
from .rows import build_report, guess_columns

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def _decode(raw: bytes, first: bool) -> str:
    """One line of bytes as text (a UTF-8 byte-order mark allowed at the start of the file)."""
    return raw.decode("utf-8-sig" if first else "utf-8")


def read_jsonl(path: Path, label: str) -> list:
    """(`label:line`, row) for every non-blank line; unreadable lines carry the reason instead."""
    rows = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{label}:{lineno}"
            try:
                line = _decode(raw, lineno == 1)
            except UnicodeDecodeError as err:
                rows.append((where, f"not valid UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1})"))
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                rows.append((where, f"invalid JSON: {err.msg} at column {err.colno}"))
                continue
            rows.append((where, row if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"))
    return rows


def _records(path: Path, records: list) -> list:
    """(`path[i]`, record) pairs; non-object records carry the reason instead."""
    return [(f"{path}[{i}]", r if isinstance(r, dict) else f"expected an object, got {type(r).__name__}")
            for i, r in enumerate(records)]


def read_json(path: Path) -> list:
    """Rows of a `.json` file: a list of objects, an object with one list of objects, or JSON Lines."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 text at byte {err.start}; save it as UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("{"):  # several objects, one a line: JSON Lines under a .json name
            return read_jsonl(path, str(path))
        raise DataError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(data) != 1 or len(lists) != 1:
            raise DataError(f"{path}: expected a list of objects (or an object holding one list); "
                            f"found an object with keys {', '.join(data)}")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of objects, found {type(data).__name__}")
    return _records(path, data)


def read_parquet(path: Path) -> list:
    """Rows of a `.parquet` file."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a damaged or foreign file
        raise DataError(f"{path}: cannot be read as Parquet ({err})") from None
    return _records(path, table.to_pylist())


def read_csv(path: Path) -> list:
    """(`path:line`, row) for every record of a `.csv` with a header line; undecodable bytes are kept
    escaped so the row holding them is reported, not the whole file."""
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    csv.field_size_limit(2**31 - 1)  # worked solutions can exceed the 128 KiB default
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows, start = [], 2
    try:
        for row in reader:
            where = f"{path}:{start}"
            start = reader.line_num + 1
            if None in row:
                rows.append((where, f"{len(row[None])} more field(s) than the header"))
            else:
                rows.append((where, row))
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: CSV cannot be read ({err})") from None
    if reader.fieldnames is None:
        raise DataError(f"{path}: empty CSV; the first line must name the columns")
    return rows


def read_rows(path: Path) -> list:
    """(where, row) pairs of a local file, by its extension."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path, str(path))
    if suffix == ".json":
        return read_json(path)
    if suffix == ".parquet":
        return read_parquet(path)
    return read_csv(path)


def check_path(spec: str) -> Path:
    """The file named by `spec`; DataError for an unsupported extension or a missing file."""
    path = Path(spec).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{spec}: unsupported file type {path.suffix or '(no extension)'!r}; supported: {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{spec}: no such file; check the path (relative paths start at {Path.cwd()})")
    return path


def load(spec: str, *, question_field: Optional[str] = None, answer_field: Optional[str] = None,
         solution_field: Optional[str] = None, strict: bool = False) -> LoadReport:
    """Problems from a local file (see the module docstring)."""
    path = check_path(spec)
    rows = read_rows(path)
    if not rows:
        what = "is empty (0 bytes)" if path.stat().st_size == 0 else "holds no rows (blank lines, an empty list or a header alone)"
        raise DataError(f"{path}: the file {what}; it needs one problem a row, with a question and an answer")
    cols = guess_columns(rows, str(path), question_field, answer_field, solution_field)
    return build_report(spec, rows, cols, id_prefix=path.stem, strict=strict)
