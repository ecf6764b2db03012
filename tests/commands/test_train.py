"""`mathgrpo train`'s closing lines, and its dry run of a run folder to resume."""

import json

from mathgrpo.api import Run
from mathgrpo.commands.train import dry_run, print_summary
from mathgrpo.config import load_config, save_config


def finished(path, summary: dict, overrides: tuple = ()) -> Run:
    """A run folder of the tiny recipe (with `overrides`) holding `summary`."""
    save_config(load_config("tiny-cpu", list(overrides)), path / "config.yaml")
    (path / "summary.json").write_text(json.dumps({"run_dir": str(path), **summary}))
    return Run(path)


def test_the_summary_names_the_accuracy_the_file_and_the_next_command(tmp_path, capsys):
    print_summary(finished(tmp_path, {"accuracy_before_grpo": 0.275, "accuracy_after_grpo": 0.635, "steps": 200,
                                      "wall_seconds": 99.4}))
    assert capsys.readouterr().out.splitlines() == [
        "held-out accuracy: 27.5% before GRPO -> 63.5% after (+36.0 points, 200 steps)",
        f"summary: {tmp_path / 'summary.json'} (99 s)",
        f"next: mathgrpo eval --model {tmp_path} --bench procedural:arith@test",
    ]


def test_a_resumed_command_gives_its_own_time_beside_the_runs_total_and_the_next_is_on_the_runs_benchmark(
        tmp_path, capsys):
    """summary.json's wall_seconds is the total over every command of the run; a resumed command's is its own."""
    print_summary(finished(tmp_path, {"wall_seconds": 250.4}, ["eval.bench=gsm8k,math500"]), resumed_seconds=50.2)
    assert capsys.readouterr().out.splitlines() == [
        f"summary: {tmp_path / 'summary.json'} (resumed: 50 s this time, 250 s over the run)",
        f"next: mathgrpo eval --model {tmp_path} --bench gsm8k,math500",
    ]


def test_a_warm_up_alone_has_no_accuracy_line(tmp_path, capsys):
    print_summary(finished(tmp_path, {"sft": {}, "wall_seconds": 3.0}))
    assert capsys.readouterr().out.startswith("summary: ")


def test_dry_run_of_a_run_to_resume_shows_its_saved_settings_with_the_overrides(tmp_path, capsys):
    save_config(load_config(None, ["grpo.steps=7"]), tmp_path / "config.yaml")
    assert dry_run(None, ["grpo.lr=0.5"], str(tmp_path), ("sft", "grpo")) == 0
    out = capsys.readouterr().out
    assert "  steps: 7" in out and "  lr: 0.5" in out and "device: cpu" in out
