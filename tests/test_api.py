"""The Python API on the tiny recipe: train returns a Run, evaluate Results, compare a Comparison; solve, export,
grade and check return values; bad input raises mathgrpo.Error with the CLI's one-line message."""

import traceback

import pytest

import mathgrpo

SHORT = {"sft": {"steps": 12, "stop_at_accuracy": None, "batch_size": 32},
         "grpo": {"steps": 3, "prompts_per_step": 4, "num_generations": 4},
         "data": {"heldout_size": 12}, "run": {"progress": False, "eval_every": 2}}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> mathgrpo.Run:
    out = tmp_path_factory.mktemp("api")
    return mathgrpo.train(run={**SHORT["run"], "output_dir": str(out)}, **{k: v for k, v in SHORT.items() if k != "run"})


def test_train_returns_the_run_with_its_summary_and_metrics(run):
    assert run.path.is_dir() and run.summary["steps"] == 3
    assert 0.0 <= run.summary["accuracy_after_grpo"] <= 1.0
    assert [r["step"] for r in run.metrics() if "reward" in r] == [1, 2, 3]
    assert run.metrics("sft")[-1]["step"] == 12 and run.config.grpo.steps == 3
    assert "accuracy_after_grpo" in run._repr_html_()


def test_resume_continues_the_same_folder_with_more_steps(run, tmp_path):
    again = run.resume(grpo={"steps": 4})
    assert again.path == run.path and again.summary["steps"] == 4
    assert [r["step"] for r in again.metrics() if "reward" in r] == [1, 2, 3, 4]


def test_evaluate_compare_and_the_reports_inline(run, tmp_path):
    before = mathgrpo.evaluate(run.path / "sft" / "model", bench="procedural:arith@test", limit=10, output=tmp_path / "a",
                               model={"dtype": "float32"})  # a section beside the positional model
    after = run.evaluate(bench="procedural:arith@test", limit=10, output=tmp_path / "b")
    [row] = after.table
    assert row["benchmark"] == "procedural_arith@test" and row["problems"] == 10 and 0 <= row["accuracy"] <= 1
    assert len(after.samples()) == 10 and after.report.is_file()
    assert after._repr_html_().startswith("<iframe srcdoc=")
    cmp = mathgrpo.compare(before, after)
    assert cmp.table[0]["shared"] == 10 and cmp.report.is_file() and cmp.report.parent == tmp_path / "b"


def test_solve_and_export(run, tmp_path):
    answer = run.solve("12+30=")
    assert answer.question == "12+30=" and isinstance(answer.text, str)
    written = run.export(tmp_path / "export", merged=True, gguf="q8_0")
    assert (written["merged"] / "config.json").is_file() and written["gguf"].is_file() and written["adapter"].is_dir()


def test_check_is_the_dry_run():
    plan = mathgrpo.check()
    assert plan.ok and any(line.startswith("device: cpu") for line in plan.lines)
    assert "rollouts: hf" in str(plan) and "<pre>" in plan._repr_html_()


def test_grade():
    assert mathgrpo.grade("0.5", "\\frac{1}{2}").equal
    assert not mathgrpo.grade("3", "4").equal


def test_bad_settings_raise_the_clis_line_without_library_frames():
    with pytest.raises(mathgrpo.Error, match=r"^grpo.lr=-1.0 must be > 0$") as err:
        mathgrpo.train(grpo={"lr": -1.0})
    frames = traceback.extract_tb(err.value.__traceback__)
    assert all(f.filename.endswith("api.py") for f in frames)
    with pytest.raises(mathgrpo.Error, match="pass a section as a dict"):
        mathgrpo.train(grpo=5)
    with pytest.raises(mathgrpo.Error, match="no such folder"):
        mathgrpo.evaluate("./no/such/run", bench="gsm8k")
    with pytest.raises(mathgrpo.Error, match="model='x': pass a section as a dict"):
        mathgrpo.evaluate(model="x")
