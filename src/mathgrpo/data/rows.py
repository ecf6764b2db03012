"""Raw rows (dicts) into Problems: which column holds what, and the bad-row bookkeeping.

Every reader (bundled, local files, hub, procedural) yields `(where, row)` pairs, where `row` is a
dict or, for a row that could not even be read, a string saying why. `build_report` turns them
into a LoadReport: good rows become Problems, the others BadRows with their `where`. Where-strings
use `path:N` (1-based line number) for line-oriented files and `name[i]` (0-based index, as in
`dataset[i]`) for record-oriented ones; problem ids use the same 0-based index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from .problem import BadRow, DataError, LoadReport, Problem
from .solutions import GoldError, clean_solution, split_gsm8k

QUESTION_NAMES = ("question", "problem", "prompt")
ANSWER_NAMES = ("answer", "final_answer", "expected_answer")
SOLUTION_NAMES = ("solution", "generated_solution")
_SCALARS = (str, int, float, bool)


@dataclass(frozen=True)
class Columns:
    """Which fields of a row hold the question, gold answer and worked solution.

    `answer_style` "gsm8k" means the answer field is a worked solution ending in `#### gold`.
    `meta` names the fields copied into Problem.meta; None copies every other scalar field.
    `id_field`, when set and present, names the problem (`<prefix>-<value>`) instead of the index.
    """

    question: str
    answer: str
    solution: Optional[str] = None
    answer_style: str = "plain"
    meta: Optional[tuple] = ()
    id_field: Optional[str] = None


def _text(row: dict, name: str, what: str) -> str:
    """The field `name` as non-empty text; GoldError saying what is missing otherwise."""
    value = row.get(name)
    if value is None or isinstance(value, (dict, list)):
        raise GoldError(f"no {what} (field {name!r} is missing or not text)")
    text = str(value).strip()
    if not text:
        raise GoldError(f"empty {what} (field {name!r})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes read with surrogateescape (CSV)
        raise GoldError(f"{what} is not valid UTF-8 text (field {name!r})") from None
    return text


def _meta(row: dict, cols: Columns) -> dict:
    """The row's extras for Problem.meta."""
    if cols.meta is not None:
        return {k: row[k] for k in cols.meta if row.get(k) is not None}
    used = {cols.question, cols.answer, cols.solution}
    return {k: v for k, v in row.items() if k not in used and isinstance(v, _SCALARS)}


def to_problem(row: dict, cols: Columns, pid: str, source: str) -> Problem:
    """One row as a Problem; GoldError naming what is wrong with it."""
    question = _text(row, cols.question, "question")
    answer = _text(row, cols.answer, "answer")
    solution = None
    if cols.answer_style == "gsm8k":
        solution, answer = split_gsm8k(answer)
    if cols.solution and row.get(cols.solution) is not None:
        solution = str(row[cols.solution])
    return Problem(id=pid, question=question, answer=answer, source=source,
                   solution=clean_solution(solution), meta=_meta(row, cols))


def _problem_id(prefix: str, index: int, row: dict, cols: Columns) -> str:
    """`<prefix>-<id field>` when the row has one, else `<prefix>-<index>`."""
    value = row.get(cols.id_field) if cols.id_field else None
    return f"{prefix}-{value}" if value not in (None, "") else f"{prefix}-{index}"


def build_report(source: str, rows: Iterable, cols: Columns, id_prefix: str, strict: bool = False) -> LoadReport:
    """Problems from `(where, row)` pairs; bad rows are counted, or with `strict` the first raises."""
    report = LoadReport(source=source)
    for index, (where, row) in enumerate(rows):
        try:
            if isinstance(row, str):
                raise GoldError(row)
            report.problems.append(to_problem(row, cols, _problem_id(id_prefix, index, row, cols), source))
        except GoldError as err:
            if strict:
                raise DataError(f"{where}: {err} (strict mode stops at the first bad row; "
                                "fix it or set strict=False to skip it)") from None
            report.bad_rows.append(BadRow(where=where, reason=str(err)))
    return report


def detect_answer_style(rows: list, answer: str) -> str:
    """"gsm8k" when any row's answer field holds a `####` line, else "plain".

    A file of GSM8K-style solutions then reports a row without `####` as bad instead of taking
    the whole solution as its gold answer.
    """
    for _, row in rows:
        if isinstance(row, dict) and isinstance(row.get(answer), str) and "####" in row[answer]:
            return "gsm8k"
    return "plain"


def pick_field(given: Optional[str], names: tuple, found: list, flag: str, where: str, required: bool = True) -> Optional[str]:
    """The column to use for `flag`: the one given (checked to exist) or the first common name found."""
    columns = ", ".join(found) or "none"
    if given is not None:
        if given not in found:
            raise DataError(f"{where}: {flag}={given!r} is not a column; columns found: {columns}")
        return given
    for name in names:
        if name in found:
            return name
    if required:
        raise DataError(f"{where}: no column named {' / '.join(names)}; pass {flag}= (columns found: {columns})")
    return None


def columns_of(rows: list) -> list:
    """Field names over all readable rows, in first-seen order."""
    seen: dict = {}
    for _, row in rows:
        if isinstance(row, dict):
            seen.update(dict.fromkeys(row))
    return list(seen)


def guess_columns(rows: list, where: str, question_field: Optional[str], answer_field: Optional[str],
                  solution_field: Optional[str]) -> Columns:
    """Columns for rows of unknown layout: the fields given, else common names (see the *_NAMES)."""
    found = columns_of(rows)
    question = pick_field(question_field, QUESTION_NAMES, found, "question_field", where)
    answer = pick_field(answer_field, ANSWER_NAMES, found, "answer_field", where)
    solution = pick_field(solution_field, tuple(n for n in SOLUTION_NAMES if n != answer), found,
                          "solution_field", where, required=False)
    return Columns(question=question, answer=answer, solution=solution,
                   answer_style=detect_answer_style(rows, answer), meta=None)
