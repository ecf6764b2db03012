"""`mathgrpo train`'s closing lines, and its dry run of a run folder to resume."""

import json

from mathgrpo.api import Run
from mathgrpo.commands.train import dry_run, print_summary
from mathgrpo.config import load_config, save_config


def test_the_summary_names_the_accuracy_the_file_and_the_next_command(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps({
        "accuracy_before_grpo": 0.275, "accuracy_after_grpo": 0.635, "steps": 200, "wall_seconds": 99.4,
        "run_dir": str(tmp_path)}))
    print_summary(Run(tmp_path))
    assert capsys.readouterr().out.splitlines() == [
        "held-out accuracy: 27.5% before GRPO -> 63.5% after (+36.0 points, 200 steps)",
        f"summary: {tmp_path / 'summary.json'} (99 s)",
        f"next: mathgrpo eval --model {tmp_path}",
    ]


def test_a_warm_up_alone_has_no_accuracy_line(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps({"sft": {}, "wall_seconds": 3.0, "run_dir": str(tmp_path)}))
    print_summary(Run(tmp_path))
    assert capsys.readouterr().out.startswith("summary: ")


def test_dry_run_of_a_run_to_resume_shows_its_saved_settings_with_the_overrides(tmp_path, capsys):
    save_config(load_config(None, ["grpo.steps=7"]), tmp_path / "config.yaml")
    assert dry_run(None, ["grpo.lr=0.5"], str(tmp_path), ("sft", "grpo")) == 0
    out = capsys.readouterr().out
    assert "  steps: 7" in out and "  lr: 0.5" in out and "device: cpu" in out
