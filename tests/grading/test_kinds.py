"""Issue 28's labelled set (tests/data/grading_kinds.jsonl): answers of the kinds the grader was not
tuned on before (plain-text expressions, scientific notation, identities, equations, solution sets,
inequalities, approximations, physics formulas, vectors), from other projects' grader tests and
written here. On each split mathgrpo must agree with the labels on at least 95% of the rows, and at
least as often as plain math-verify overall, per source and per kind; the `test` split was held out
while the grader was changed."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from mathgrpo.grading import judge

ROOT = Path(__file__).resolve().parents[2]
KINDS_FILE = ROOT / "tests" / "data" / "grading_kinds.jsonl"
KINDS = ["plain-text", "scientific", "identity", "equation", "solution-set", "inequality", "approximate", "physics", "vector", "other"]
BAR = 0.95


def _grading_check():
    """benchmarks/grading_check.py as a module: the tests assert on the numbers the script prints."""
    spec = importlib.util.spec_from_file_location("grading_check", ROOT / "benchmarks" / "grading_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checked():
    """(grading_check, {split: agreement}) for both splits, computed once for the module."""
    judge.warm_up()
    gc = _grading_check()
    return gc, {split: gc.agreement(gc.load_pairs(split, gc.KINDS)) for split in ("tune", "test")}


def _rows() -> list:
    return [json.loads(x) for x in KINDS_FILE.read_text().splitlines() if x.strip()]


def test_rows_are_labelled_sourced_and_split_by_the_gold():
    """Every row has a label, a kind, an origin and a licence; its source has a row in the README's
    table; its split is the one the SHA-1 of its gold gives (so no row moved after the split)."""
    readme = (ROOT / "tests" / "data" / "README.md").read_text()
    rows = _rows()
    assert len(rows) > 600 and len({r["source"] for r in rows}) >= 9
    for r in rows:
        assert isinstance(r["label"], bool) and r["kind"] in KINDS and r["origin"] and r["licence"], r
        assert f"| `{r['source']}` |" in readme, r["source"]
        expected = "tune" if hashlib.sha1(r["gold"].encode()).digest()[0] % 2 == 0 else "test"
        assert r["split"] == expected, r


@pytest.mark.parametrize("split", ["test", "tune"])
@pytest.mark.exclusive  # a check that hits its time limit on a starved machine counts as a disagreement
def test_agreement_overall_and_per_source(checked, split):
    """At least 95% agreement overall, and never below plain math-verify, overall or on any source."""
    gc, results = checked
    result = results[split]
    gc.print_agreement(f"grading_kinds.jsonl, {split} split", result)
    overall = result["by_source"]["all"]
    assert overall["mathgrpo"] >= BAR * overall["n"], [(r["gold"], r["pred"], r["label"]) for r in result["misses"]["mathgrpo"]]
    for source, entry in result["by_source"].items():
        assert entry["mathgrpo"] >= entry["math_verify"], source


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("split", ["test", "tune"])
@pytest.mark.exclusive  # a check that hits its time limit on a starved machine counts as a disagreement
def test_each_kind_at_least_plain_math_verify(checked, split, kind):
    """Per kind of answer, mathgrpo agrees with the labels at least as often as plain math-verify."""
    entry = checked[1][split]["by_kind"].get(kind)
    if entry is None:
        pytest.skip(f"no {kind} rows in the {split} split")
    assert entry["mathgrpo"] >= entry["math_verify"], (kind, entry)


def test_the_bar_can_fail():
    """A grader that says "equal" to everything, or one that never does, falls below the 95% bar."""
    gc = _grading_check()
    pairs = gc.load_pairs("test", gc.KINDS)
    for constant in (True, False):
        result = gc.agreement(pairs, with_math_verify=False, mathgrpo=lambda g, p, c=constant: c)
        assert result["by_source"]["all"]["mathgrpo"] < BAR * len(pairs)
