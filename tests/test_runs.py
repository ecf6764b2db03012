"""Run folders: claimed exclusively, named safely; every folder of a run's layout stands for a model."""

import threading

import pytest

import mathgrpo
from mathgrpo.cli import main
from mathgrpo.config import LoraConfig, load_config, save_config
from mathgrpo.runs import RunError, new_run_dir, resolve_model


def test_runs_started_in_the_same_second_never_share_a_folder(tmp_path):
    """Eight runs with default names claim folders at once: eight folders, each with its config."""
    cfg = load_config("tiny-cpu", [f"run.output_dir={tmp_path}"])
    got, start = [], threading.Barrier(8)

    def claim():
        start.wait()
        got.append(new_run_dir(cfg, "tiny-cpu"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 8
    assert all(sorted(p.name for p in path.iterdir()) == ["config.yaml"] for path in got)


def test_a_taken_run_name_is_refused_and_an_empty_folder_taken(tmp_path):
    cfg = load_config("tiny-cpu", [f"run.output_dir={tmp_path}", "run.name=x"])
    (tmp_path / "x").mkdir()
    assert new_run_dir(cfg, None) == tmp_path / "x"
    with pytest.raises(RunError, match="--resume"):
        new_run_dir(cfg, None)


@pytest.mark.parametrize("name", ["a/b", "../escaped", "/tmp/abs", ".."])
def test_run_name_must_be_one_folder_name(tmp_path, capsys, name):
    """run.name with a path in it is refused before anything is written, inside or outside output_dir."""
    out = tmp_path / "runs"
    assert main(["train", f"run.output_dir={out}", f"run.name={name}"]) == 2
    assert "run.name" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder as `mathgrpo train` leaves it, on the tiny model: config.yaml, the warm-up model and its
    checkpoints 28 and 30 (full models), GRPO checkpoints 2 and 4 (LoRA adapters on the warm-up model)."""
    from transformers import AutoModelForCausalLM

    from mathgrpo.model.loading import add_lora
    from mathgrpo.model.tiny import build_tiny

    run = tmp_path_factory.mktemp("runs") / "r1"
    run.mkdir()
    save_config(load_config("tiny-cpu"), run / "config.yaml")
    model, tok = build_tiny(0)
    for folder in (run / "sft" / "model", *(run / "sft" / "checkpoints" / f"ckpt-{s:06d}" / "model" for s in (28, 30))):
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    for step in (2, 4):
        folder = run / "grpo" / "checkpoints" / f"ckpt-{step:06d}" / "model"
        warm = AutoModelForCausalLM.from_pretrained(run / "sft" / "model")
        add_lora(warm, LoraConfig(r=4, alpha=8)).save_pretrained(folder)
        tok.save_pretrained(folder)
    for ckpt in (run / "sft" / "checkpoints").glob("ckpt-*"):
        (ckpt / "meta.json").write_text("{}")  # finished, as checkpoint.save leaves them
    for ckpt in (run / "grpo" / "checkpoints").glob("ckpt-*"):
        (ckpt / "meta.json").write_text("{}")
    return run


@pytest.mark.parametrize("given, model, label", [
    ("grpo/checkpoints/ckpt-000002", "grpo/checkpoints/ckpt-000002/model", "r1-ckpt-000002"),
    ("grpo/checkpoints/ckpt-000002/model", "grpo/checkpoints/ckpt-000002/model", "r1-ckpt-000002"),
    ("grpo/checkpoints", "grpo/checkpoints/ckpt-000004/model", "r1-ckpt-000004"),
    ("sft", "sft/model", "r1-sft"),  # the warm-up's own model, not its last checkpoint
    ("sft/checkpoints", "sft/checkpoints/ckpt-000030/model", "r1-sft-ckpt-000030"),
    ("sft/checkpoints/ckpt-000028", "sft/checkpoints/ckpt-000028/model", "r1-sft-ckpt-000028"),
    ("sft/checkpoints/ckpt-000028/model", "sft/checkpoints/ckpt-000028/model", "r1-sft-ckpt-000028"),
])
def test_every_folder_of_a_run_stands_for_its_model(tiny_run, given, model, label):
    """A checkpoint, checkpoints or stage folder resolves to the model it holds, labelled apart from the others,
    with the run it came from (training curves in the report)."""
    ref = resolve_model(str(tiny_run / given))
    assert (ref.path, ref.label, ref.run_dir) == (str(tiny_run / model), label, tiny_run)


def test_eval_of_a_checkpoint_folder_says_which_model_it_took(tiny_run, tmp_path, capsys):
    ckpt = tiny_run / "grpo" / "checkpoints" / "ckpt-000002"
    argv = ["eval", "--model", str(ckpt), "--limit", "2", "--output", str(tmp_path / "res"), "run.progress=false"]
    assert main(argv) == 0, capsys.readouterr().err
    assert f"model: {ckpt / 'model'} (run {tiny_run})" in capsys.readouterr().out.splitlines()


def test_solve_and_export_take_a_checkpoint_folder(tiny_run, tmp_path, capsys):
    ckpt = tiny_run / "grpo" / "checkpoints" / "ckpt-000004"
    assert isinstance(mathgrpo.solve("07+28=", ckpt).text, str)
    assert f"model: {ckpt / 'model'}" in capsys.readouterr().out  # the folder it answered with
    written = mathgrpo.export(ckpt, tmp_path / "export", merged=False)
    assert (written["adapter"] / "adapter_config.json").is_file()


def test_a_checkpoint_exports_by_default_into_a_folder_named_for_it(tiny_run, tmp_path, monkeypatch):
    """Not `model-export`, the name of every checkpoint's model folder: the run's name and the checkpoint's."""
    monkeypatch.chdir(tmp_path)
    written = mathgrpo.export(tiny_run / "grpo" / "checkpoints" / "ckpt-000004", merged=False)
    assert written["adapter"].resolve() == tmp_path / "r1-ckpt-000004-export" / "adapter"


def test_a_folder_without_a_model_is_refused_in_one_line(tiny_run, tmp_path, capsys):
    """The folder the runs are in: one line naming it, what it lacks, the run folders in it and what to pass; the
    Python API raises the same line."""
    runs = tiny_run.parent
    assert main(["eval", "--model", str(runs), "--limit", "2", "--output", str(tmp_path / "res")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"mathgrpo eval: --model {runs}: no model in this folder (no config.json or adapter_config")
    assert line.endswith(f"but run folders (r1): pass one, e.g. --model {tiny_run}")
    with pytest.raises(mathgrpo.Error, match="no model in this folder .* a checkpoint folder") as err:
        mathgrpo.export(tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
