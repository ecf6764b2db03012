"""Write the bundled part of tests/data/grading_pairs.jsonl: labelled (gold, pred) pairs made from the
bundled golds, beside the pairs transcribed from other projects' tests (kept as they are).

    PYTHONPATH=src python benchmarks/build_grading_pairs.py

bundled-math500: every MATH-500 gold re-spelled (`\\!` removed, `\\dfrac`, `\\left( \\right)`,
matrices as bmatrix with other spacing, fractions as 15-digit decimals, thousands written plainly,
boxed, spaces) -> label true; the gold with its first or last integer bumped -> label false.
bundled-gsm8k: every eighth GSM8K test gold with thousands commas, a dollar sign, `.00`, boxed ->
true; off by one, off by a half -> false. The split (tune or test) is drawn per gold from a hash of
the gold, so every spelling of one gold lands in the same split. No grader is run here: the labels
come from how each pair was made.
"""

from __future__ import annotations

import hashlib
import json
import re
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "mathgrpo" / "data" / "bundled"
PAIRS = ROOT / "tests" / "data" / "grading_pairs.jsonl"
_FRACTION = re.compile(r"^(-?)\\frac\{(\d+)\}\{(\d+)\}$")
_THOUSANDS = re.compile(r"\d,(?:\\!)?\d{3}")  # a thousands separator: never spaced out as a list
# An integer that is the power of a unit (`\mbox{ cm}^2`): bumping it changes the unit, not the answer.
_UNIT_POWER = re.compile(r"\\(?:mbox|text)\{[^{}]*\}\^\{?$")


def split_of(key: str) -> str:
    """`tune` or `test`, half each, fixed by a hash of `key`."""
    return "tune" if hashlib.sha1(key.encode()).digest()[0] % 2 == 0 else "test"


def _matrix(gold: str) -> str:
    """A pmatrix written as a bmatrix with spaces around `&` and `\\\\`."""
    body = gold.replace("pmatrix", "bmatrix").replace("\\\\", " \\\\ ").replace("&", " & ")
    return re.sub(r" +", " ", body)


def _decimal(gold: str) -> str:
    """A plain `\\frac{a}{b}` as a decimal to 15 significant digits (else the gold unchanged)."""
    m = _FRACTION.match(gold.strip())
    if not m:
        return gold
    value = Fraction(int(m.group(2)), int(m.group(3)))
    return ("-" if m.group(1) else "") + f"{float(value):.15g}"


def _left_right(gold: str) -> str:
    """`(a, b)` -> `\\left( a, b \\right)` for a gold that is one bracketed tuple."""
    if gold.startswith("(") and gold.endswith(")") and gold.count("(") == 1:
        return "\\left( " + gold[1:-1] + " \\right)"
    return gold


def math500_respellings(gold: str) -> list:
    """Spellings of `gold` that mean the same, each different from it."""
    spellings = [
        gold.replace("\\!", ""),
        gold.replace("\\frac", "\\dfrac"),
        _left_right(gold),
        _matrix(gold) if "pmatrix" in gold else gold,
        _decimal(gold),
        gold.replace(",\\!", "").replace("{,}", "") if re.fullmatch(r"[\d,\\!{}.]+", gold) else gold,
        f"\\boxed{{{gold}}}",
        gold if _THOUSANDS.search(gold) else gold.replace(", ", ",") if ", " in gold else gold.replace(",", ", "),
    ]
    return list(dict.fromkeys(s for s in spellings if s != gold))


def bump_integer(text: str, last: bool = False) -> str:
    """`text` with its first (or last) integer increased by one (unchanged when it has none)."""
    found = list(re.finditer(r"\d+", text))
    if not found:
        return text
    m = found[-1] if last else found[0]
    if _UNIT_POWER.search(text[: m.start()]):
        return text
    return text[: m.start()] + str(int(m.group()) + 1) + text[m.end():]


def _row(gold: str, pred: str, label: bool, source: str, how: str) -> dict:
    """One pair as written to the file."""
    origin = "src/mathgrpo/data/bundled/" + ("math500_test.jsonl" if source == "bundled-math500" else "gsm8k_test.jsonl")
    return {"gold": gold, "pred": pred, "label": label, "source": source, "split": split_of(gold),
            "origin": f"{origin} ({how})", "licence": "see src/mathgrpo/data/bundled/NOTICE"}


def math500_pairs() -> list:
    """Re-spellings (true) and bumped integers (false) of every MATH-500 gold."""
    rows = []
    for line in (BUNDLED / "math500_test.jsonl").read_text().splitlines():
        gold = json.loads(line)["answer"]
        rows += [_row(gold, s, True, "bundled-math500", "re-spelled") for s in math500_respellings(gold)]
        for last in (False, True):
            bumped = bump_integer(gold, last)
            if bumped != gold and not any(r["pred"] == bumped and r["gold"] == gold for r in rows):
                rows.append(_row(gold, bumped, False, "bundled-math500", "an integer bumped"))
    return rows


def gsm8k_pairs() -> list:
    """Every eighth GSM8K test gold: thousands commas, `$`, `.00`, boxed (true); +1 and +0.5 (false)."""
    rows = []
    for i, line in enumerate((BUNDLED / "gsm8k_test.jsonl").read_text().splitlines()):
        if i % 8:
            continue
        gold = json.loads(line)["answer"].split("####")[-1].strip().replace(",", "")
        value = int(gold)
        same = [f"{value:,}", f"\\${gold}", f"{gold}.00", f"\\boxed{{{gold}}}"]
        rows += [_row(gold, s, True, "bundled-gsm8k", "re-spelled") for s in dict.fromkeys(same) if s != gold]
        rows += [_row(gold, p, False, "bundled-gsm8k", "off by one or a half") for p in (str(value + 1), f"{value}.5")]
    return rows


def main() -> None:
    """Rewrite the bundled rows of the pairs file, keeping every other row as it is."""
    kept = []
    if PAIRS.exists():
        kept = [json.loads(x) for x in PAIRS.read_text().splitlines() if x.strip()]
        kept = [r for r in kept if not r["source"].startswith("bundled-")]
    rows = kept + math500_pairs() + gsm8k_pairs()
    PAIRS.parent.mkdir(parents=True, exist_ok=True)
    PAIRS.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} pairs ({len(kept)} kept from other sources) -> {PAIRS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
