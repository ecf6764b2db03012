"""`mathgrpo eval --compare A B`: two results folders on the same problems, B against A.

Per benchmark both folders have: the accuracy difference B - A with a paired bootstrap 95% interval
(2,000 resamples of the shared problems, seeded), and the problems B fixed (unsolved in A, solved
in B) and broke. A problem is *solved* when at least half of its samples are correct (with greedy
decoding: its one answer is right).

Different problem sets: the comparison runs on the problems both folders share and says so with a
warning (terminal and report), because comparing a `--limit 100` run with a full run is a common,
legitimate question. It fails when nothing is shared, or when a shared problem id has different
gold answers in the two folders (they were made from different data).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .benchmark import EvalError
from ..runs import write_json
from .metrics import group_by_problem, paired_bootstrap, problem_scores

RESAMPLES = 2000
SEED = 0


class CompareError(EvalError):
    """Two results folders cannot be compared; the message says why and what to do."""


def load_results(folder: str) -> tuple:
    """(metrics.json dict, {bench: {problem id: [records]}}) of a results folder, metrics' problems only."""
    from .report import read_records

    path = Path(folder)
    if not (path / "metrics.json").is_file():
        raise CompareError(f"{folder} has no metrics.json; pass a folder written by `mathgrpo eval` (finished)")
    metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    records = read_records(path, metrics)
    return metrics, {bench: group_by_problem(recs) for bench, recs in records.items()}


def _solved(score: float) -> bool:
    return score >= 0.5


def compare_bench(a: dict, b: dict, bench: str) -> dict:
    """The comparison of one benchmark, from {id: [records]} of A and of B."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise CompareError(f"{bench}: A has {len(a)} problems, B has {len(b)}, none shared; were they run on the same benchmark split and seed?")
    for pid in shared:
        if a[pid][0]["gold"] != b[pid][0]["gold"]:
            raise CompareError(f"{bench}/{pid}: gold {a[pid][0]['gold']!r} in A but {b[pid][0]['gold']!r} in B; the folders come from different data")
    sa, sb = problem_scores({k: a[k] for k in shared}), problem_scores({k: b[k] for k in shared})
    boot = paired_bootstrap([sa[k] for k in shared], [sb[k] for k in shared], resamples=RESAMPLES, seed=SEED)

    def row(pid: str) -> dict:
        return {"id": pid, "question": a[pid][0]["question"], "gold": a[pid][0]["gold"],
                "answer_a": a[pid][0]["answer"], "answer_b": b[pid][0]["answer"], "score_a": sa[pid], "score_b": sb[pid]}

    warning = None
    if len(shared) < max(len(a), len(b)):
        warning = (f"{bench}: problem sets differ (A {len(a)}, B {len(b)}, shared {len(shared)}); "
                   "compared on the shared problems only")
    return {
        "shared": len(shared), "only_a": len(set(a) - set(b)), "only_b": len(set(b) - set(a)),
        "accuracy_a": sum(sa.values()) / len(shared), "accuracy_b": sum(sb.values()) / len(shared),
        **boot,
        "fixed": [row(k) for k in shared if not _solved(sa[k]) and _solved(sb[k])],
        "broken": [row(k) for k in shared if _solved(sa[k]) and not _solved(sb[k])],
        "warning": warning,
    }


def compare(a_dir: str, b_dir: str, references: bool = True) -> dict:
    """Compare every benchmark two results folders share (B - A); `references`: show published figures."""
    ma, ra = load_results(a_dir)
    mb, rb = load_results(b_dir)
    common = [k for k in ra if k in rb]
    if not common:
        raise CompareError(f"{a_dir} has benchmarks {sorted(ra)} and {b_dir} has {sorted(rb)}: none in common")
    skipped = sorted(set(ra) ^ set(rb))
    return {
        "a": {"folder": str(a_dir), "model": ma["model"], "model_path": ma.get("model_path", ""), "settings": ma["settings"]},
        "b": {"folder": str(b_dir), "model": mb["model"], "model_path": mb.get("model_path", ""), "settings": mb["settings"]},
        "benchmarks": {k: compare_bench(ra[k], rb[k], k) for k in common},
        "specs": {k: mb["benchmarks"][k].get("spec", k) for k in common},
        "skipped_benchmarks": skipped,
        "solved_means": "at least half of a problem's samples correct",
        "references": references,
    }


def compare_folders(a_dir: str, b_dir: str, output: Optional[str] = None, references: bool = True) -> tuple:
    """Compare A and B and write compare.json/.md/.html into `output` (default B); (the comparison, the HTML page)."""
    from .report import write_compare_report

    result = compare(a_dir, b_dir, references)
    out = Path(output or b_dir)
    if out.is_dir() and any(out.iterdir()) and not any((out / f).exists() for f in ("metrics.json", "compare.json")):
        raise CompareError(f"--output {out} holds other files and is not a results or comparison folder of mathgrpo "
                           "eval; pass a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", result)
    return result, write_compare_report(out, result)
