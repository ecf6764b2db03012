"""Check the judge against the bundled golds and against hostile input; print the numbers.

    PYTHONPATH=src python benchmarks/grading_check.py [--limit 1.0] [--workers 2]

Prints: golds equivalent to themselves and to their own worked solution (X/1819), golds with their
first integer bumped that are (rightly) not equivalent, the worst and total wall time of 1,000
hostile predictions, and, per split of tests/data/grading_pairs.jsonl and of
tests/data/grading_kinds.jsonl (issue 28's set: plain text, scientific notation, identities,
equations, inequalities, approximations, physics, vectors), the agreement with the labels of
mathgrpo and of plain math-verify (verify(parse(gold), parse(pred)), default settings) side by
side, overall, per source and (for the kinds set) per kind, with the time per pair (median, p99) of
each. tests/grading/test_judge.py and test_kinds.py run the same functions, so the numbers quoted
from here are the ones the tests assert on.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
import threading
import time
from pathlib import Path
from typing import Optional

from mathgrpo.grading import judge
from mathgrpo.data.formats import last_boxed

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "mathgrpo" / "data" / "bundled"
PAIRS = Path(__file__).resolve().parents[1] / "tests" / "data" / "grading_pairs.jsonl"
KINDS = PAIRS.with_name("grading_kinds.jsonl")
HOSTILE_GOLDS = ["3", "\\frac{1}{2}", "(1,2)", "x^2+1"]


def gsm8k_pairs() -> list:
    """(raw text after the last ####, gold with commas removed) for every GSM8K test row."""
    pairs = []
    for line in (BUNDLED / "gsm8k_test.jsonl").read_text().splitlines():
        raw = json.loads(line)["answer"].split("####")[-1].strip()
        pairs.append((raw, raw.replace(",", "")))
    return pairs


def math500_pairs() -> list:
    """(last \\boxed{} of the worked solution, answer field) for every MATH-500 row."""
    pairs = []
    for line in (BUNDLED / "math500_test.jsonl").read_text().splitlines():
        row = json.loads(line)
        pairs.append((last_boxed(row["solution"]), row["answer"]))
    return pairs


def gold_self_check() -> tuple:
    """(golds equal to themselves and to their solution's answer, total, the failing pairs)."""
    pairs = gsm8k_pairs() + math500_pairs()
    failed = [(s, g) for s, g in pairs if not (judge.is_equivalent(g, g) and judge.is_equivalent(s, g))]
    return len(pairs) - len(failed), len(pairs), failed


def bump_first_integer(text: str) -> str:
    """`text` with its first integer increased by one (unchanged when it has none)."""
    return re.sub(r"\d+", lambda m: str(int(m.group()) + 1), text, count=1)


def changed_gold_check() -> tuple:
    """(bumped golds judged not equivalent, golds that have a number, the pairs wrongly judged equal)."""
    golds = [g for _, g in gsm8k_pairs() + math500_pairs()]
    changed = [(bump_first_integer(g), g) for g in golds if bump_first_integer(g) != g]
    wrong = [(c, g) for c, g in changed if judge.is_equivalent(c, g)]
    return len(changed) - len(wrong), len(changed), wrong


# --- hostile input ---------------------------------------------------------------------------------


def _tower(rng: random.Random) -> str:
    """A tower of numeric exponents: 10^{10^{10^{10}}} and relatives."""
    depth = rng.randint(2, 6)
    base = str(rng.choice([2, 9, 10, 99]))
    text = base
    for _ in range(depth):
        text = f"{base}^{{{text}}}"
    return rng.choice([text, text.replace("{", "(").replace("}", ")"), text.replace("^", "**")])


def _huge_string(rng: random.Random) -> str:
    """A 100,000-character string of digits, LaTeX or junk."""
    unit = rng.choice(["1", "\\frac{1}{2}+", "x", "ab ", "9,"])
    return (unit * (100_000 // len(unit) + 1))[:100_000]


def _deep_braces(rng: random.Random) -> str:
    """Braces (or parentheses, or \\sqrt{) nested thousands deep."""
    n = rng.randint(1000, 5000)
    opener, closer = rng.choice([("{", "}"), ("(", ")"), ("\\sqrt{", "}"), ("[", "]")])
    return opener * n + "1" + closer * n


def _unbalanced(rng: random.Random) -> str:
    """LaTeX with missing or extra delimiters."""
    parts = ["\\frac{1}{", "\\sqrt{", "\\left(", "\\right)", "}", "{", "\\begin{pmatrix}", "\\end{", "$", "^", "_"]
    return "".join(rng.choice(parts) + str(rng.randint(0, 9)) for _ in range(rng.randint(1, 40)))


def _control(rng: random.Random) -> str:
    """Control characters, NUL bytes and stray Unicode around a number."""
    junk = "".join(chr(rng.randint(0, 31)) for _ in range(rng.randint(1, 50)))
    return rng.choice([junk, "3" + junk, junk + "\\frac{1}{2}" + junk, "\x00" * 100, "\u202e3\u200b", "\ufeff(1,2)"])


def _frac_spam(rng: random.Random) -> str:
    """\\frac nested (up to the guard depth and past it) or chained many times."""
    depth = rng.randint(5, 40)
    if rng.random() < 0.5:
        return "\\frac{" * depth + "1" + "}{2}" * depth
    return "+".join("\\frac{%d}{%d}" % (rng.randint(1, 99), rng.randint(1, 99)) for _ in range(depth))


def _factorial(rng: random.Random) -> str:
    """Huge factorials, literal or hidden behind braces."""
    return rng.choice(["1000000!", "99999999!!", "(10^{6})!", "{10^{4}}!", "\\Gamma(10^{5})", "(1000!)!"])


def _heavy_sympy(rng: random.Random) -> str:
    """Expressions under every guard that can still make sympy work hard."""
    n = rng.randint(3000, 9999)
    return rng.choice([
        f"9^{{{n}}}-9^{{{n - 1}}}",
        f"\\binom{{{n * 10}}}{{{n * 5}}}",
        f"(x+1)^{{{n}}}",
        f"\\sin(10^{{{n // 10}}})",
        "x^{x^{x^{x^{x}}}}",
        "\\sum_{k=1}^{10^{4}} k^{k}",
        "\\int_0^1 e^{x^{2}} dx",
        "\\lim_{x\\to\\infty} x^{x}",
    ])


def _random_junk(rng: random.Random) -> str:
    """Printable noise of modest length."""
    return "".join(rng.choice(string.printable) for _ in range(rng.randint(1, 3000)))


GENERATORS = [_tower, _huge_string, _deep_braces, _unbalanced, _control, _frac_spam, _factorial, _heavy_sympy, _random_junk]


def hostile_inputs(n: int = 1000, seed: int = 0) -> list:
    """`n` hostile predictions, the same ones for the same seed."""
    rng = random.Random(seed)
    return [GENERATORS[i % len(GENERATORS)](rng) for i in range(n)]


def _grade_timed(items: list, limit: float, times: list, errors: list) -> None:
    """Grade (index, prediction) items one by one, appending each wall time and any exception."""
    for i, pred in items:
        t0 = time.monotonic()
        try:
            judge.is_equivalent(pred, HOSTILE_GOLDS[i % len(HOSTILE_GOLDS)], timeout=limit)
        except Exception as exc:  # the judge promises never to raise; record it if it does
            errors.append(f"{i}: {type(exc).__name__}: {exc}")
        times.append(time.monotonic() - t0)


def hostile_check(limit: float = 1.0, n: int = 1000, seed: int = 0, threads: int = 1) -> dict:
    """Grade each hostile prediction against one of a few golds from `threads` threads (none of
    them the main thread when threads > 1); per-check wall times, exceptions and how checks ended."""
    items = list(enumerate(hostile_inputs(n, seed)))
    times, errors = [], []
    before = judge.stats.as_dict()
    t0 = time.monotonic()
    if threads == 1:
        _grade_timed(items, limit, times, errors)
    else:
        pool = [threading.Thread(target=_grade_timed, args=(items[k::threads], limit, times, errors)) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    wall = time.monotonic() - t0
    after = judge.stats.as_dict()
    return {
        "n": len(times),
        "worst_s": max(times),
        "total_s": sum(times),
        "wall_s": wall,
        "times": times,
        "exceptions": errors,
        "worker_errors": after["errors"] - before["errors"],
        **{k: after[k] - before[k] for k in ("timeouts", "guarded", "too_long", "math_verify")},
    }


# --- labelled pairs: mathgrpo against plain math-verify -----------------------------------------


def load_pairs(split: Optional[str] = None, path: Path = PAIRS) -> list:
    """The labelled pairs of tests/data/grading_pairs.jsonl, or of `path` (one split, or all)."""
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r for r in rows if split is None or r["split"] == split]


def plain_math_verify(gold: str, pred: str) -> bool:
    """Plain math-verify with default settings: verify(parse(gold), parse(pred))."""
    from math_verify import parse, verify

    return bool(verify(parse(gold), parse(pred)))


def _judge_all(pairs: list, judge) -> tuple:
    """(verdicts, seconds per pair) of `judge(gold, pred)` over `pairs`, one by one."""
    verdicts, seconds = [], []
    for r in pairs:
        t0 = time.perf_counter()
        verdicts.append(judge(r["gold"], r["pred"]))
        seconds.append(time.perf_counter() - t0)
    return verdicts, seconds


def _percentile(values: list, q: float) -> float:
    """The q-quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def agreement(pairs: list, with_math_verify: bool = True, mathgrpo=None) -> dict:
    """Agreement with the labels of mathgrpo (or of `mathgrpo(gold, pred)` when given) and
    (optionally) plain math-verify: per source, per kind (rows that have one) and overall
    {"n", "mathgrpo", "math_verify"}, the time per pair of each, and each judge's misses."""
    judges = {"mathgrpo": mathgrpo or (lambda g, p: judge.is_equivalent(p, g))}
    if with_math_verify:
        judges["math_verify"] = plain_math_verify
    out = {"by_source": {}, "by_kind": {}, "seconds": {}, "misses": {}}
    for name, judge_fn in judges.items():
        verdicts, seconds = _judge_all(pairs, judge_fn)
        out["seconds"][name] = {"median": _percentile(seconds, 0.5), "p99": _percentile(seconds, 0.99)}
        out["misses"][name] = [r for r, v in zip(pairs, verdicts) if v != r["label"]]
        for field, table in (("source", out["by_source"]), ("kind", out["by_kind"])):
            groups = sorted({r[field] for r in pairs if field in r})
            for group in (["all"] if field == "source" else []) + groups:
                rows = [(r, v) for r, v in zip(pairs, verdicts) if group == "all" or r.get(field) == group]
                table.setdefault(group, {"n": len(rows)})[name] = sum(v == r["label"] for r, v in rows)
    return out


def print_agreement(split: str, result: dict) -> None:
    """The side-by-side table for one split: per source, then per kind."""
    print(f"labelled pairs, {split}: agreement with the labels (mathgrpo | plain math-verify)")
    for table in ("by_source", "by_kind"):
        for group, e in result[table].items():
            mv = f"{e['math_verify']:5d}/{e['n']:<5d} ({e['math_verify'] / e['n']:6.1%})" if "math_verify" in e else "-"
            label = group if table == "by_source" else f"kind: {group}"
            print(f"  {label:24s} {e['mathgrpo']:5d}/{e['n']:<5d} ({e['mathgrpo'] / e['n']:6.1%}) | {mv}")
    for name, t in result["seconds"].items():
        print(f"  time per pair, {name}: median {t['median'] * 1000:.2f} ms, p99 {t['p99'] * 1000:.1f} ms")


def main() -> None:
    """Run the three checks and print the numbers."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=float, default=1.0, help="math-verify time limit per hostile check, seconds")
    ap.add_argument("--workers", type=int, default=2, help="threads for the hostile check")
    ap.add_argument("--splits", nargs="*", default=["tune", "test"], help="labelled-pair splits to compare (tune, test)")
    ap.add_argument("--show-misses", action="store_true", help="print each labelled pair mathgrpo gets wrong")
    args = ap.parse_args()
    judge.warm_up(args.workers)
    t0 = time.monotonic()
    ok, total, failed = gold_self_check()
    print(f"gold self-check: {ok}/{total} equivalent to themselves and their own solution ({time.monotonic() - t0:.1f} s)")
    for s, g in failed:
        print(f"  FAILED: solution {s!r} vs gold {g!r}")
    t0 = time.monotonic()
    not_eq, with_number, wrong = changed_gold_check()
    print(f"changed golds: {not_eq}/{with_number} with the first integer bumped judged not equivalent ({time.monotonic() - t0:.1f} s)")
    for c, g in wrong:
        print(f"  WRONGLY EQUAL: {c!r} vs {g!r}")
    h = hostile_check(args.limit, threads=args.workers)
    print(
        f"hostile: {h['n']} inputs, limit {args.limit:g} s, {args.workers} threads: worst check {h['worst_s']:.3f} s, "
        f"total {h['total_s']:.2f} s of checks ({h['wall_s']:.1f} s wall); {h['timeouts']} timeouts, "
        f"{h['guarded']} guarded, {h['too_long']} too long, {h['math_verify']} decided by math-verify, "
        f"{h['worker_errors']} worker errors, {len(h['exceptions'])} exceptions raised"
    )
    for path in (PAIRS, KINDS):
        for split in args.splits:
            result = agreement(load_pairs(split, path))
            print_agreement(f"{path.name}, {split} split", result)
            for r in result["misses"]["mathgrpo"] if args.show_misses else []:
                print(f"  MISS ({r['source']}, label {r['label']}): pred {r['pred'][:120]!r} gold {r['gold'][:120]!r}")
    print(f"grading stats: {judge.stats.as_dict()}")


if __name__ == "__main__":
    main()
