"""Up-front checks: every missing input of a run in one message, in seconds, before any folder is made."""

import time

import torch

from mathgrpo.cli import main


def test_reference_recipe_without_its_inputs_lists_them_all_at_once(tmp_path, capsys, monkeypatch):
    """No model, no hub data (offline), no GPU: one message naming each, no run folder, in seconds."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    t0 = time.monotonic()
    for _ in range(2):  # the same command again meets the same message, not a folder left behind
        assert main(["train", "--recipe", "qwen3-4b-grpo", f"run.output_dir={tmp_path / 'runs'}"]) == 2
        err = capsys.readouterr().err
        assert "nothing was started" in err
        for setting in ("model.name=Qwen/Qwen3-4B-Base", "data.source=hub:open-r1/DAPO-Math-17k-Processed",
                        "sft.source=hub:unsloth/OpenMathReasoning-mini"):
            assert setting in err, setting
        assert ("model.device=auto: this recipe is made for a GPU" in err) == (not torch.cuda.is_available())
    assert time.monotonic() - t0 < 20
    assert not (tmp_path / "runs").exists()


def test_bad_local_sources_are_found_before_the_folder(tmp_path, capsys):
    assert main(["train", f"run.output_dir={tmp_path / 'runs'}", "data.source=missing.jsonl",
                 "sft.source=math500", "data.heldout_source=procedural:no_such_task"]) == 2
    err = capsys.readouterr().err
    assert "3 input(s) missing" in err and "missing.jsonl: no such file" in err
    assert "math500@test" in err and "no such reasoning-gym generator" in err
    assert not (tmp_path / "runs").exists()


def test_dry_run_prints_settings_sources_and_memory_and_starts_nothing(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", "--dry-run", f"run.output_dir={out}", "grpo.max_memory_gb=2"]) == 0
    text = capsys.readouterr().out
    assert "# resolved settings" in text and "max_memory_gb: 2.0" in text
    assert "model.name=tiny: built in" in text and "data.source=procedural:arith: generated" in text
    assert "memory: budget 2.0 GiB" in text
    assert not out.exists()


def test_a_run_failing_before_any_stage_leaves_no_folder(tmp_path, capsys):
    """A data file that exists but holds no usable rows fails after the folder is made: the folder goes again."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x": 1}\n')
    argv = ["train", f"run.output_dir={tmp_path / 'runs'}", "run.name=r", f"data.source={bad}", "data.heldout_source=gsm8k"]
    for _ in range(2):
        assert main(argv) == 2
        assert "bad.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "r").exists()
