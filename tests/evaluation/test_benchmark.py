"""`mathgrpo eval` end to end on the tiny model (CPU): results folder, resume, run folders, few-shot, errors."""

import json
from pathlib import Path

import pytest

from mathgrpo.cli import main as cli
from mathgrpo.config import LoraConfig, load_config, save_config
from mathgrpo.evaluation.benchmark import resolve_model
from mathgrpo.model.loading import add_lora
from mathgrpo.model.tiny import build_tiny

FAST = ["rollout.max_new_tokens=16", "run.progress=false", "run.threads=1"]
RECORD_KEYS = {"bench", "id", "sample", "question", "gold", "completion", "answer", "correct", "verdict",
               "well_formed", "length", "finished", "meta"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The built-in tiny model and tokenizer saved as an ordinary model folder."""
    path = tmp_path_factory.mktemp("models") / "tiny-model"
    model, tok = build_tiny(0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def lines(path: Path) -> list:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_eval_writes_results_and_resumes(tiny_dir, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["eval", "--model", str(tiny_dir), "--bench", "gsm8k,math500", "--limit", "3", "--output", str(out), *FAST]
    assert cli(argv) == 0
    for name in ("metrics.json", "samples.jsonl", "prompt.json", "eval_config.json", "report.md", "report.html"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["benchmarks"]) == {"gsm8k", "math500"}
    for key, m in metrics["benchmarks"].items():
        assert m["problems"] == 3 and m["samples_per_problem"] == 1 and m["generated"] == 3 and m["reused"] == 0
        assert {"accuracy", "ci", "pass@k", "maj@k", "format_adherence", "answered", "truncated", "length"} <= set(m)
        assert 0 <= m["ci"][0] <= m["accuracy"] <= m["ci"][1] <= 1
        assert m["length"]["max"] <= 16
    assert {"by_level", "by_subject"} <= set(metrics["benchmarks"]["math500"])
    assert "by_level" not in metrics["benchmarks"]["gsm8k"]
    samples = lines(out / "samples.jsonl")
    assert len(samples) == 6 and all(set(r) == RECORD_KEYS for r in samples)
    assert {r["bench"] for r in samples} == {"gsm8k", "math500"}
    assert all(r["meta"].get("level") for r in samples if r["bench"] == "math500")
    prompts = json.loads((out / "prompt.json").read_text())
    assert prompts["gsm8k"]["shots"] == [] and "{question}" in prompts["gsm8k"]["prompt_template"]
    assert prompts["gsm8k"]["example_prompt"].count("Problem:") == 1
    printed = capsys.readouterr().out
    assert "report.html" in printed and "gsm8k" in printed

    # Second run of the same command: every sample is already there, nothing is generated.
    before = (out / "samples.jsonl").read_text()
    assert cli(argv) == 0
    assert "gsm8k: 3 of 3 samples already in" in capsys.readouterr().out
    assert (out / "samples.jsonl").read_text() == before
    again = json.loads((out / "metrics.json").read_text())["benchmarks"]
    assert all(m["generated"] == 0 and m["reused"] == 3 for m in again.values())


def test_interrupted_run_resumes_only_missing_samples(tiny_dir, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["eval", "--model", str(tiny_dir), "--bench", "gsm8k", "--limit", "3", "--output", str(out), *FAST]
    assert cli(argv) == 0
    path = out / "samples.jsonl"
    kept = path.read_text().splitlines()[:2]
    # As if killed mid-write: two whole lines, then half of the third.
    path.write_text("\n".join(kept) + "\n" + '{"bench": "gsm8k", "id": "gsm8')
    (out / "metrics.json").unlink()
    assert cli(argv) == 0
    assert "gsm8k: 2 of 3 samples already in" in capsys.readouterr().out
    assert len(lines(path)) == 3  # the torn line is gone, the missing sample written once
    assert json.loads((out / "metrics.json").read_text())["benchmarks"]["gsm8k"]["generated"] == 1


def test_other_settings_in_the_same_folder_fail_clearly(tiny_dir, tmp_path, capsys):
    out = tmp_path / "res"
    base = ["eval", "--model", str(tiny_dir), "--bench", "gsm8k", "--limit", "1", "--output", str(out), *FAST]
    assert cli(base) == 0
    assert cli(base + ["--shots", "1"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "shots: 0 -> 1" in err and "--output" in err


def test_samples_shots_and_any_source(tiny_dir, tmp_path):
    out = tmp_path / "res"
    # Overrides between flags, too: argparse alone would refuse the second run of key=value words.
    argv = ["eval", "--model", str(tiny_dir), "rollout.temperature=1.0", "--bench", "gsm8k,procedural:arith",
            "--limit", "2", "--n", "3", "--shots", "2", "--output", str(out), "eval.k=[1,2]", *FAST]
    assert cli(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["benchmarks"]) == {"gsm8k", "procedural_arith"}
    for m in metrics["benchmarks"].values():
        assert m["samples_per_problem"] == 3 and m["problems"] == 2
        assert set(m["pass@k"]) == {"1", "2", "3"} and set(m["maj@k"]) == {"1", "2", "3"}
    samples = lines(out / "samples.jsonl")
    assert len(samples) == 2 * 2 * 3
    assert sorted({r["sample"] for r in samples}) == [0, 1, 2]
    prompts = json.loads((out / "prompt.json").read_text())["gsm8k"]
    assert len(prompts["shots"]) == 2 and prompts["shots_source"] == "gsm8k@train"
    # The first gsm8k train problem, its solution written in the reasoning format.
    assert "Natalia sold clips" in prompts["example_prompt"]
    assert "[REASONING]Natalia sold 48/2 = 24 clips in May." in prompts["example_prompt"]
    assert "[ANSWER]72" in prompts["example_prompt"]
    assert "3 samples per problem at temperature 1.0" in (out / "report.md").read_text()


def _save(model, tok, path: Path) -> None:
    model.save_pretrained(path)
    tok.save_pretrained(path)


def test_run_folder_resolution(tmp_path):
    run = tmp_path / "runs" / "try1"
    assert resolve_model("Qwen/Qwen3-4B-Base").path == "Qwen/Qwen3-4B-Base"
    (run / "sft" / "model").mkdir(parents=True)
    assert resolve_model(str(run)).path == str(run / "sft" / "model")
    assert resolve_model(str(run / "sft" / "model")).label == "try1-sft"
    for step in (10, 50, 200):
        (run / "grpo" / "checkpoints" / f"ckpt-{step:06d}" / "model").mkdir(parents=True)
        (run / "grpo" / "checkpoints" / f"ckpt-{step:06d}" / "meta.json").write_text("{}")
    ref = resolve_model(str(run))
    assert ref.path.endswith("ckpt-000200/model") and ref.run_dir == run and ref.label == "try1-ckpt-000200"
    assert resolve_model(str(run / "grpo")).path == ref.path  # the stage folder works too
    empty = tmp_path / "runs" / "empty"
    (empty / "grpo" / "checkpoints").mkdir(parents=True)
    with pytest.raises(Exception, match="run folder without checkpoints"):
        resolve_model(str(empty))


def test_eval_of_a_run_folder_with_an_adapter_plots_training_curves(tiny_dir, tmp_path):
    run = tmp_path / "runs" / "try1"
    ckpt = run / "grpo" / "checkpoints" / "ckpt-000020" / "model"
    _, tok = build_tiny(0)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    _save(add_lora(base, LoraConfig(r=4, alpha=8)), tok, ckpt)
    (ckpt.parent / "meta.json").write_text("{}")  # a finished checkpoint, as checkpoint.save leaves it
    assert (ckpt / "adapter_config.json").is_file()
    rows = [{"step": s, "reward": 0.1 * s, "accuracy": 0.02 * s, "note": "text is skipped"} for s in range(1, 6)]
    rows.append({"step": 5, "heldout_accuracy": 0.3})
    (run / "grpo" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    # The run was trained with bare prompts: evaluation must prompt the same way by default.
    save_config(load_config(None, ["format.template=bare"]), run / "config.yaml")
    out = tmp_path / "res"
    argv = ["eval", "--model", str(run), "--bench", "math500", "--limit", "2", "--output", str(out), *FAST]
    assert cli(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "try1-ckpt-000020" and metrics["run_dir"] == str(run)
    assert (out / "plots" / "training.png").is_file()
    prompts = json.loads((out / "prompt.json").read_text())["math500"]
    assert prompts["template"] == "bare" and prompts["prompt_template"] == "{question}"
    md = (out / "report.md").read_text()
    assert "## Training curves" in md and "plots/training.png" in md


def test_prompts_that_cannot_fit_stop_before_generating(tiny_dir, tmp_path, capsys):
    """GSM8K under the tiny recipe's 64 tokens: one line naming the benchmark, the token counts and what to change,
    no sample written; the same folder then takes the recipe's own held-out task and a changed budget."""
    out = tmp_path / "res"
    base = ["eval", "--model", str(tiny_dir), "--recipe", "tiny-cpu", "--limit", "3", "--output", str(out),
            "run.progress=false", "run.threads=1"]
    assert cli(base + ["--bench", "gsm8k"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mathgrpo eval: gsm8k: the longest prompt is ")
    longest = int(err.split("the longest prompt is ")[1].split()[0])
    assert longest > 64 and f"rollout.max_new_tokens=24 is {longest + 24}, more than model.max_seq_length=64" in err
    assert f"model.max_seq_length={longest + 24} (if the model allows)" in err and "another --bench" in err
    assert "nothing generated" in err and not (out / "samples.jsonl").exists()
    assert load_config("tiny-cpu").eval.bench == "procedural:arith@test"
    assert cli(base + ["rollout.max_new_tokens=20"]) == 0  # the recipe's eval.bench; a folder without samples is reused
    assert json.loads((out / "metrics.json").read_text())["benchmarks"]["procedural_arith@test"]["problems"] == 3


def test_a_model_with_fewer_positions_than_max_seq_length_stops_with_its_own_limit(tmp_path, capsys):
    """A model that declares 512 positions: its limit is named, not model.max_seq_length (2048), and transformers'
    "exceeded the model's predefined maximum length" reminder never comes."""
    model, tok = build_tiny(0)
    model.config.max_position_embeddings = 512
    _save(model, tok, tmp_path / "short")
    rc = cli(["eval", "--model", str(tmp_path / "short"), "--bench", "gsm8k", "--output", str(tmp_path / "res"), *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "more than the model's max_position_embeddings=512 (below model.max_seq_length=2048)" in err
    assert "rollout.max_new_tokens=" in err and "model.max_seq_length=" not in err.split("Try ")[1]
    assert "predefined maximum length" not in err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    rc = cli(["eval", "--model", str(tmp_path / "nope"), "--bench", "gsm8k", "--limit", "1",
              "--output", str(tmp_path / "res"), *FAST])
    assert rc == 2
    assert "nope" in capsys.readouterr().err


def test_a_bench_that_names_nothing_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """A typo in --bench is the first thing said, even where the model named is nowhere to be had."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for bench, said in (("gsm8k,nosuch", "unknown data source 'nosuch'"), ("gsm8k@dev", "gsm8k has split"),
                        (str(tmp_path / "none.jsonl"), "none.jsonl: no such file")):
        assert cli(["eval", "--model", "owner/absent", "--bench", bench, "--output", str(tmp_path / "res")]) == 2
        err = capsys.readouterr().err
        assert f"--bench {bench.split(',')[-1]}: " in err and said in err and "owner/absent" not in err
    assert not (tmp_path / "res").exists()


def test_a_folder_of_other_files_is_refused_untouched(tiny_dir, tmp_path, capsys):
    """--output into a folder that is not a results folder of ours: refused, the user's files as they were."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.json").write_text("my numbers")
    (out / "report.md").write_text("my report")
    argv = ["eval", "--model", str(tiny_dir), "--bench", "gsm8k", "--limit", "1", "--output", str(out), *FAST]
    assert cli(argv) == 2
    assert "not a results folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "report.md"]
    assert (out / "metrics.json").read_text() == "my numbers" and (out / "report.md").read_text() == "my report"


def test_new_weights_in_the_same_folder_are_not_reused(tiny_dir, tmp_path, capsys):
    """Samples of the old weights are never reported for new weights saved under the same path."""
    model_dir = tmp_path / "mymodel"
    _save(*build_tiny(0), model_dir)
    out = tmp_path / "res"
    argv = ["eval", "--model", str(model_dir), "--bench", "gsm8k", "--limit", "2", "--output", str(out), *FAST]
    assert cli(argv) == 0
    _save(*build_tiny(1), model_dir)  # other weights, same folder
    capsys.readouterr()
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "of other weights (the model changed since" in err and "--output" in err


def test_another_benchmark_into_the_same_folder_keeps_both(tiny_dir, tmp_path):
    out = tmp_path / "res"
    base = ["eval", "--model", str(tiny_dir), "--limit", "2", "--output", str(out), *FAST]
    assert cli(base + ["--bench", "gsm8k"]) == 0
    assert cli(base + ["--bench", "math500"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["benchmarks"]) == {"gsm8k", "math500"}
    assert set(json.loads((out / "prompt.json").read_text())) == {"gsm8k", "math500"}
    md = (out / "report.md").read_text()
    assert "| gsm8k |" in md and "| math500 |" in md


def test_a_resumed_sampled_run_draws_the_same_samples(tiny_dir, tmp_path):
    """--n 4 interrupted part-way through a problem's samples resumes to exactly the uninterrupted samples."""
    argv = ["eval", "--model", str(tiny_dir), "--bench", "gsm8k", "--limit", "3", "--n", "4", "rollout.temperature=1.0", *FAST]
    assert cli(argv + ["--output", str(tmp_path / "whole")]) == 0
    cut = tmp_path / "cut"
    assert cli(argv + ["--output", str(cut)]) == 0
    path = cut / "samples.jsonl"
    path.write_text("\n".join(path.read_text().splitlines()[:6]) + "\n")  # killed after 6 of 12 samples
    (cut / "metrics.json").unlink()
    assert cli(argv + ["--output", str(cut)]) == 0
    texts = lambda folder: {(r["id"], r["sample"]): r["completion"] for r in lines(folder / "samples.jsonl")}  # noqa: E731
    assert texts(cut) == texts(tmp_path / "whole")
    assert len(set(texts(cut).values())) > 3  # really sampled, not all alike


@pytest.mark.slow
def test_ctrl_c_during_eval_exits_130_with_a_resume_hint(tiny_dir, tmp_path):
    """SIGINT mid-evaluation: exit 130, one line saying how to go on, no traceback; the rerun finishes the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "res"
    argv = [sys.executable, "-m", "mathgrpo", "eval", "--model", str(tiny_dir), "--bench", "gsm8k", "--limit", "120",
            "--output", str(out), "rollout.batch_size=4", "rollout.max_new_tokens=32", "run.progress=false", "run.threads=1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}

    def interruptible():
        """A child inherits an ignored or blocked SIGINT from the test process (the full suite under xdist left it
        so: the eval ran to its end, exit 0), and Python then raises no KeyboardInterrupt: a terminal's Ctrl-C."""
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
    deadline = time.time() + 120
    while not ((out / "samples.jsonl").exists() and (out / "samples.jsonl").read_text().count("\n") >= 4):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "run the same command again" in stderr, stderr
    done = len(lines(out / "samples.jsonl"))
    assert 4 <= done < 120  # 120: a starved test process still signals long before the end
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"gsm8k: {done} of 120 samples already in" in rerun.stdout


def test_eval_without_model_refuses_the_untrained_tiny_model(tmp_path, capsys):
    assert cli(["eval", "--bench", "gsm8k", "--limit", "1", "--output", str(tmp_path / "res"), *FAST]) == 2
    assert "no --model" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()


def test_solve_names_only_flags_it_accepts(tiny_dir, tmp_path, capsys):
    """`solve` on a run folder says which of its own flags change the run's settings, and they work."""
    import re

    run = tmp_path / "runs" / "try1"
    _save(*build_tiny(0), run / "sft" / "model")
    save_config(load_config(None, ["format.template=bare"]), run / "config.yaml")
    assert cli(["solve", "07+28=", "--model", str(run), "--max-new-tokens", "4"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("settings:"))
    named = re.findall(r"--[a-z-]+", line)
    assert named and "--recipe" not in named and "key=value" not in line
    for flag in named:
        value = {"--format": "reasoning", "--template": "bare", "--max-new-tokens": "4"}[flag]
        assert cli(["solve", "07+28=", "--model", str(run), flag, value]) == 0


def test_a_warm_up_model_in_a_run_folder_brings_its_curves(tmp_path):
    run = tmp_path / "runs" / "try1"
    (run / "sft" / "model").mkdir(parents=True)
    save_config(load_config(None), run / "config.yaml")
    ref = resolve_model(str(run / "sft" / "model"))
    assert ref.run_dir == run and ref.label == "try1-sft"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    assert resolve_model(str(plain)).run_dir is None
