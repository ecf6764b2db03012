"""Benchmark estimators as pure functions: pass@k, maj@k, confidence intervals, grouped accuracy.

Nothing here reads files or models; `benchmark.py` gathers per-sample records and calls these.
A *record* is a dict with at least `id`, `sample`, `correct`, `answer`, `well_formed`, `length`
and `finished` (see `evaluate.sample_record`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Iterable, Optional

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, eq. 1).

    1 - C(n-c, k) / C(n, k), computed as the product 1 - prod_{i=n-c+1}^{n} (1 - k/i), which
    never forms the huge binomials.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def normalise_answer(answer: str) -> str:
    """A voting key for an extracted answer: surrounding `$`, spaces and a trailing period dropped.

    Only for grouping votes when no equivalence function is given; grading stays with grading/judge.py.
    """
    text = answer.strip().strip("$").strip()
    text = text.rstrip(".").strip()
    return " ".join(text.split())


def majority_vote(answers: list, same: Optional[Callable[[str, str], bool]] = None) -> Optional[int]:
    """Index of the answer the most samples agree on (None answers do not vote); None if none voted.

    Answers are grouped by `same(a, b)` when given (e.g. the grader's equivalence), else by equal
    `normalise_answer` keys. A tie goes to the group whose first member came first. The index
    returned is that first member's, so its verdict can be looked up.
    """
    groups: list = []  # [first index, key, votes]
    for i, ans in enumerate(answers):
        if ans is None:
            continue
        key = normalise_answer(ans)
        for g in groups:
            if g[1] == key or (same is not None and same(answers[g[0]], ans)):
                g[2] += 1
                break
        else:
            groups.append([i, key, 1])
    if not groups:
        return None
    best = max(groups, key=lambda g: (g[2], -g[0]))
    return best[0]


def maj_at_k(answers: list, correct: list, k: int, same: Optional[Callable[[str, str], bool]] = None) -> bool:
    """Whether the majority answer of the first k samples is correct (no answer at all: wrong)."""
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k: need 1 <= k <= {len(answers)} samples, got k={k}")
    winner = majority_vote(answers[:k], same)
    return winner is not None and bool(correct[winner])


def wilson_interval(successes: float, total: int, z: float = 1.96) -> tuple:
    """Wilson score interval for a binomial proportion (95% for z=1.96); (0, 0) when total is 0."""
    if total == 0:
        return (0.0, 0.0)
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    # The bounds hold p exactly: at 0% or 100% rounding would otherwise put a bound ~1e-17 past it.
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def bootstrap_mean_ci(values: list, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple:
    """Percentile bootstrap interval for the mean of `values` (resampling the values themselves)."""
    vals = np.asarray(values, dtype=float)
    if len(vals) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(vals), size=(resamples, len(vals)))
    means = vals[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return (float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)))


def paired_bootstrap(a: list, b: list, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Difference mean(b) - mean(a) over paired per-problem scores, with a paired percentile bootstrap CI.

    The same resampled problems are used for both sides, so the interval reflects how much the
    difference depends on which problems were drawn, not the (larger) noise of each accuracy alone.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_bootstrap: {len(a)} scores in A but {len(b)} in B; they must be paired")
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    lo, hi = bootstrap_mean_ci(list(diff), resamples=resamples, seed=seed, level=level)
    return {"diff": float(diff.mean()) if len(diff) else 0.0, "ci": [lo, hi], "resamples": resamples, "seed": seed}


def group_by_problem(records: Iterable) -> dict:
    """Records grouped by problem id, each group sorted by sample index."""
    groups: dict = defaultdict(list)
    for r in records:
        groups[r["id"]].append(r)
    return {pid: sorted(rs, key=lambda r: r["sample"]) for pid, rs in groups.items()}


def length_stats(lengths: list, bins: int = 20) -> dict:
    """Mean, median, 90th percentile, max and a histogram of completion lengths (tokens)."""
    if not lengths:
        return {"mean": 0.0, "median": 0.0, "p90": 0.0, "max": 0, "histogram": {"counts": [], "edges": []}}
    arr = np.asarray(lengths, dtype=float)
    counts, edges = np.histogram(arr, bins=bins)
    return {
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        "p90": float(np.percentile(arr, 90)),
        "max": int(arr.max()),
        "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
    }


def accuracy_with_ci(scores: list, binary: bool, seed: int = 0) -> dict:
    """Mean of per-problem scores with a 95% interval: Wilson for 0/1 scores, bootstrap for fractions."""
    n = len(scores)
    mean = float(np.mean(scores)) if n else 0.0
    ci = wilson_interval(sum(scores), n) if binary else bootstrap_mean_ci(scores, seed=seed)
    return {"accuracy": mean, "ci": [ci[0], ci[1]], "problems": n}


def problem_scores(groups: dict) -> dict:
    """Per problem: the fraction of its samples graded correct."""
    return {pid: sum(bool(r["correct"]) for r in rs) / len(rs) for pid, rs in groups.items()}


def accuracy_by(groups: dict, key: Callable[[dict], Optional[str]], seed: int = 0) -> dict:
    """Accuracy and CI per value of `key(first record of a problem)` (e.g. MATH subject or level)."""
    scores = problem_scores(groups)
    binary = all(len(rs) == 1 for rs in groups.values())
    by: dict = defaultdict(list)
    for pid, rs in groups.items():
        value = key(rs[0])
        if value is not None:
            by[str(value)].append(scores[pid])
    return {value: accuracy_with_ci(vals, binary, seed) for value, vals in sorted(by.items())}


def summarise(
    records: list,
    ks: list,
    same: Optional[Callable[[str, str], bool]] = None,
    seed: int = 0,
) -> dict:
    """Every benchmark metric from one benchmark's per-sample records.

    With one sample per problem the accuracy is pass@1 of that sample (greedy in `evaluate`); with
    n > 1 it is the mean accuracy over samples, plus pass@k and maj@k (first k samples) for each k.
    """
    groups = group_by_problem(records)
    if not groups:
        raise ValueError("summarise: no records")
    sizes = {len(rs) for rs in groups.values()}
    if len(sizes) != 1:
        raise ValueError(f"summarise: problems have different sample counts {sorted(sizes)}; finish the run first")
    n = sizes.pop()
    scores = problem_scores(groups)
    out = {"problems": len(groups), "samples_per_problem": n}
    out.update(accuracy_with_ci(list(scores.values()), binary=n == 1, seed=seed))
    out["pass@k"] = {}
    out["maj@k"] = {}
    for k in sorted({k for k in ks if 1 <= k <= n}):
        out["pass@k"][str(k)] = float(np.mean([pass_at_k(n, round(s * n), k) for s in scores.values()]))
        out["maj@k"][str(k)] = float(
            np.mean([maj_at_k([r["answer"] for r in rs], [r["correct"] for r in rs], k, same) for rs in groups.values()])
        )
    flat = [r for rs in groups.values() for r in rs]
    out["format_adherence"] = sum(bool(r["well_formed"]) for r in flat) / len(flat)
    out["answered"] = sum(r["answer"] is not None for r in flat) / len(flat)
    out["truncated"] = sum(not r["finished"] for r in flat) / len(flat)
    out["length"] = length_stats([r["length"] for r in flat])
    if any(r.get("meta", {}).get("subject") is not None for r in flat):
        out["by_subject"] = accuracy_by(groups, lambda r: r.get("meta", {}).get("subject"), seed)
    if any(r.get("meta", {}).get("level") is not None for r in flat):
        out["by_level"] = accuracy_by(groups, lambda r: r.get("meta", {}).get("level"), seed)
    return out
