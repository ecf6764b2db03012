"""`data show`: examples in the format, counts, bad rows, and exit codes."""

import json

import pytest

from mathgrpo.commands.data import show


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    """A wide console so long lines are not wrapped in the captured output."""
    monkeypatch.setenv("COLUMNS", "200")


def test_show_prints_examples_warm_up_and_counts(capsys):
    """show prints n problems with their warm-up text, and the counts."""
    assert show("gsm8k", n=2, split="test") == 0
    out = capsys.readouterr().out
    assert "gsm8k-test-0" in out and "gsm8k-test-1" in out and "gsm8k-test-2" not in out
    assert "Janet\u2019s ducks lay 16 eggs per day." in out
    assert "[REASONING]Janet sells 16 - 3 - 4 = 9 duck eggs a day." in out
    assert "market.[ANSWER]18" in out
    assert "problems loaded" in out and "1319" in out


def test_show_in_another_format_and_without_solutions(capsys):
    """show renders another preset and says when a problem has no worked solution."""
    assert show("procedural:chain_sum", n=1, fmt_preset="think", size=5) == 0
    out = capsys.readouterr().out
    assert "chain_sum-train-s0-0" in out and "(no worked solution)" in out
    assert show("math500", n=1, fmt_preset="think", split="test") == 0
    assert "</think><answer>\\left( 3, \\frac{\\pi}{2} \\right)</answer>" in capsys.readouterr().out


def test_show_lists_bad_rows(tmp_path, capsys):
    """show lists bad rows with where and why."""
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n" + json.dumps({"question": "x?"}) + "\n")
    assert show(str(path)) == 0
    out = capsys.readouterr().out
    assert "bad rows skipped" in out and f"{path}:2" in out and "no answer" in out


@pytest.mark.parametrize("spec, kwargs, message", [
    ("math500", {}, "math500 has split test only"),
    ("gsm8k", {"fmt_preset": "fancy"}, "unknown format preset 'fancy'"),
    ("nope.jsonl", {}, "nope.jsonl: no such file"),
])
def test_show_errors_exit_2_with_the_message(spec, kwargs, message, capsys):
    """Errors exit with 2 and the message on stderr, nothing on stdout."""
    assert show(spec, **kwargs) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_a_source_with_one_split_shows_it_and_the_suggestion_works(capsys):
    """`mathgrpo data show math500` reads its only split; the fix an error prints works as printed."""
    import re

    from mathgrpo.cli import main

    assert main(["data", "show", "math500", "-n", "1"]) == 0
    assert "math500@test" in capsys.readouterr().out
    assert main(["data", "show", "math500", "--split", "train", "-n", "1"]) == 2
    suggested = re.search(r"`mathgrpo data show (\S+)`", capsys.readouterr().err).group(1)
    assert main(["data", "show", suggested, "-n", "1"]) == 0
