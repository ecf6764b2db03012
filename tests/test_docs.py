"""The docs quote the same run as the README."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_evaluation_doc_quotes_the_readme_run():
    """README's comparison line and docs/evaluation.md's table row carry the same numbers."""
    readme = (ROOT / "README.md").read_text()
    doc = (ROOT / "docs" / "evaluation.md").read_text()
    run = re.search(r"R=(runs/tiny-cpu-\S+)", readme).group(1)
    assert f"R={run}" in doc
    a, b, diff, lo, hi, fixed, broken = re.search(
        r"│ procedural_arith@test │\s+200 │ ([\d.]+%) │ ([\d.]+%) │ ([+-][\d.]+) │\s+([+-][\d.]+), ([+-][\d.]+) │\s+(\d+) │\s+(\d+) │",
        readme).groups()
    row = f"| procedural_arith@test | 200 | {a} | {b} | {diff} pts | {lo} to {hi} | {fixed} | {broken} |"
    assert row in doc


def test_readme_stays_short():
    """The README is for users: under 9,000 characters (measurements live in docs/performance.md)."""
    assert len((ROOT / "README.md").read_text()) < 9000
