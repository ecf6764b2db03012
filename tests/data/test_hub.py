"""Hub sets through `datasets`, on local folders laid out like the hub repos, offline.

Each fixture writes what the hub repo holds (README.md with its `configs:` block, the data files
under the same paths, the same columns); `hub_root` routes the hub id to it.
"""

import os

# Offline before `datasets` is imported anywhere: nothing here may reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from mathgrpo.data import DataError, load_source  # noqa: E402
from mathgrpo.data.solutions import sft_text  # noqa: E402
from mathgrpo.data.formats import PRESETS, parse_completion  # noqa: E402


def readme(configs):
    """A hub README.md whose YAML header declares `configs` as {name: {split: glob}}."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {glob}" for split, glob in splits.items()]
    return "\n".join(lines + ["---", "# fixture"]) + "\n"


def write_repo(root, repo_id, files, configs=None):
    """A folder `root/repo_id` holding parquet/jsonl `files` {relative path: columns} and a README."""
    repo = Path(root) / repo_id
    for rel, columns in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".jsonl"):
            rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            pq.write_table(pa.table(columns), path)
    if configs:
        (repo / "README.md").write_text(readme(configs))
    return repo


def gsm8k_columns(n, split):
    """openai/gsm8k columns; the last row lacks its `####` line."""
    answers = [f"{i}+1=<<{i}+1={i + 1}>>{i + 1}\n#### {i + 1},000" for i in range(n - 1)] + ["no marker"]
    return {"question": [f"{split} q{i}?" for i in range(n)], "answer": answers}


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory):
    """Local copies of the four known sets and one unknown set, laid out like their hub repos."""
    root = tmp_path_factory.mktemp("hub")
    write_repo(root, "openai/gsm8k", {
        "main/train-00000-of-00001.parquet": gsm8k_columns(4, "train"),
        "main/test-00000-of-00001.parquet": gsm8k_columns(3, "test"),
        "socratic/train-00000-of-00001.parquet": gsm8k_columns(2, "socratic"),
    }, {"main": {"train": "main/train-*", "test": "main/test-*"}, "socratic": {"train": "socratic/train-*"}})
    write_repo(root, "HuggingFaceH4/MATH-500", {"test.jsonl": {
        "problem": ["Find $x$.", "Find $y$."], "solution": ["So $x=\\boxed{\\frac{1}{2}}$.", "Hence $\\boxed{3}$."],
        "answer": ["\\frac{1}{2}", "3"], "subject": ["Algebra", "Geometry"], "level": [1, 5],
        "unique_id": ["test/algebra/1.json", "test/geometry/2.json"]}})
    dapo = {lang: {"prompt": [f"{lang} p{i}" for i in range(n)], "solution": [str(i) for i in range(n)],
                   "data_source": ["math_dapo"] * n, "ability": ["MATH"] * n,
                   "reward_model": [{"ground_truth": str(i), "style": "rule-lighteval/MATH_v2"} for i in range(n)],
                   "extra_info": [{"index": str(i)} for i in range(n)]}
            for lang, n in (("en", 3), ("cn", 2))}
    dapo["all"] = {k: dapo["en"][k] + dapo["cn"][k] for k in dapo["en"]}
    write_repo(root, "open-r1/DAPO-Math-17k-Processed",
               {f"{c}/train-00000-of-00001.parquet": cols for c, cols in dapo.items()},
               {c: {"train": f"{c}/train-*"} for c in ("all", "en", "cn")})
    write_repo(root, "unsloth/OpenMathReasoning-mini", {"data/cot-00000-of-00001.parquet": {
        "expected_answer": ["14", "2"], "problem_type": ["has_answer_extracted"] * 2,
        "problem_source": ["aops_c4"] * 2, "generation_model": ["DeepSeek-R1"] * 2,
        "pass_rate_72b_tir": ["0.5", "n/a"], "problem": ["What is 2*7?", "What is 1+1?"],
        "generated_solution": ["<think>\nTwo sevens make 14.\n</think>\nThe answer is \\boxed{14}.", "<think>1+1=2</think>"],
        "inference_mode": ["cot"] * 2}}, {"default": {"cot": "data/cot-*"}})
    write_repo(root, "someone/my-set", {"train.parquet": {"q": ["a?", "b?"], "gold": ["1", "2"], "hint": ["h1", "h2"]}})
    return root


@pytest.fixture
def load(hub_root, tmp_path):
    """load_source with the fixture folder as hub_root and a private `datasets` cache."""
    return lambda spec, **kw: load_source(spec, hub_root=str(hub_root), cache_dir=str(tmp_path / "cache"), **kw)


def test_offline_for_this_module():
    """The module's offline setting reached `datasets` (nothing imported it earlier)."""
    import datasets

    assert datasets.config.HF_HUB_OFFLINE, "datasets was imported before this module set HF_HUB_OFFLINE"


def test_gsm8k_layout(load, hub_root):
    """openai/gsm8k: default config main, `####` gold, calculator notes removed, bad row at its index, configs in ids."""
    report = load("hub:openai/gsm8k@test")
    assert [(p.id, p.question, p.answer, p.solution) for p in report.problems] == [
        ("gsm8k-test-0", "test q0?", "1000", "0+1=1"), ("gsm8k-test-1", "test q1?", "2000", "1+1=2")]
    assert [(b.where, b.reason) for b in report.bad_rows] == [
        ("hub:openai/gsm8k:main@test[2]", "answer has no '#### <answer>' line (GSM8K style)")]
    assert len(load("hub:openai/gsm8k", split="train").problems) == 3
    socratic = load("hub:openai/gsm8k:socratic").problems
    assert [p.id for p in socratic] == ["gsm8k-socratic-train-0"]
    with pytest.raises(DataError, match=r"^hub:openai/gsm8k:main@test\[2\]: answer has no '####"):
        load("hub:openai/gsm8k@test", strict=True)


def test_math500_layout(load):
    """HuggingFaceH4/MATH-500: gold, unwrapped solution, meta, unique_id ids; train is not a split."""
    problems = load("hub:HuggingFaceH4/MATH-500@test").problems
    assert [(p.id, p.answer, p.solution) for p in problems] == [
        ("math500-test/algebra/1.json", "\\frac{1}{2}", "So $x=\\frac{1}{2}$."),
        ("math500-test/geometry/2.json", "3", "Hence $3$.")]
    assert problems[1].meta == {"subject": "Geometry", "level": 5, "unique_id": "test/geometry/2.json"}
    with pytest.raises(DataError, match=r"hub:HuggingFaceH4/MATH-500@train: cannot load .*Unknown split \"train\"\. Should be one of \['test'\]"):
        load("hub:HuggingFaceH4/MATH-500")


def test_dapo_layout_configs(load):
    """open-r1/DAPO-Math-17k-Processed: solution is the gold, default config all, `:en` picks a config."""
    everything = load("hub:open-r1/DAPO-Math-17k-Processed").problems
    assert [(p.id, p.question, p.answer) for p in everything][:2] == [("dapo17k-train-0", "en p0", "0"), ("dapo17k-train-1", "en p1", "1")]
    assert len(everything) == 5 and all(p.solution is None for p in everything)
    assert everything[0].meta == {"data_source": "math_dapo"}
    english = load("hub:open-r1/DAPO-Math-17k-Processed:en@train").problems
    assert [p.id for p in english] == ["dapo17k-en-train-0", "dapo17k-en-train-1", "dapo17k-en-train-2"]
    with pytest.raises(DataError, match=r"BuilderConfig 'fr' not found"):
        load("hub:open-r1/DAPO-Math-17k-Processed:fr")


def test_openmathreasoning_layout(load):
    """unsloth/OpenMathReasoning-mini: train means cot; think tags and the box leave the solution."""
    problems = load("hub:unsloth/OpenMathReasoning-mini").problems  # train -> its only split, cot
    assert [(p.id, p.answer, p.solution) for p in problems] == [
        ("omr-mini-cot-0", "14", "Two sevens make 14.\n\nThe answer is 14."), ("omr-mini-cot-1", "2", "1+1=2")]
    fmt = PRESETS["unsloth"]
    parsed = parse_completion(sft_text(problems[0], fmt), fmt)
    assert parsed.well_formed and parsed.answer == "14"


def test_unknown_set_needs_fields_and_lists_columns(load):
    """An unknown set needs question_field and answer_field; the error lists the columns."""
    with pytest.raises(DataError, match=r"hub:someone/my-set@train is not a known set .*question_field= and answer_field= \(columns found: q, gold, hint\)"):
        load("hub:someone/my-set")
    problems = load("hub:someone/my-set", question_field="q", answer_field="gold").problems
    assert [(p.id, p.question, p.answer, p.meta) for p in problems] == [
        ("someone/my-set-train-0", "a?", "1", {"hint": "h1"}), ("someone/my-set-train-1", "b?", "2", {"hint": "h2"})]
    with pytest.raises(DataError, match="answer_field='expected' is not a column; columns found: q, gold, hint"):
        load("hub:someone/my-set", question_field="q", answer_field="expected")


def test_known_set_with_overridden_field(load):
    """A field given for a known set overrides its column map."""
    problems = load("hub:unsloth/OpenMathReasoning-mini", solution_field="problem_source").problems
    assert problems[0].solution == "aops_c4"


def test_environment_root_and_local_folder_as_id(hub_root, tmp_path, monkeypatch):
    """MATHGRPO_HUB_ROOT routes ids; a folder path as id picks the map from its last two parts."""
    monkeypatch.setenv("MATHGRPO_HUB_ROOT", str(hub_root))
    assert len(load_source("hub:openai/gsm8k@test", cache_dir=str(tmp_path)).problems) == 2
    monkeypatch.delenv("MATHGRPO_HUB_ROOT")
    folder = hub_root / "openai" / "gsm8k"
    report = load_source(f"hub:{folder}@test", cache_dir=str(tmp_path))  # its last two parts pick the gsm8k map
    assert [p.answer for p in report.problems] == ["1000", "2000"]


def test_missing_set_offline_says_what_to_do(load):
    """A set that is neither local nor cached fails offline with a hint about local copies."""
    with pytest.raises(DataError, match=r"hub:nobody/nothing@train: cannot load 'nobody/nothing'.*MATHGRPO_HUB_ROOT/nobody/nothing"):
        load("hub:nobody/nothing")


def test_fresh_interpreter_with_offline_variables(hub_root, tmp_path):
    """A fresh interpreter with only the HF offline variables set loads a local hub layout."""
    code = ("from mathgrpo.data import load_source; import sys; "
            "r = load_source('hub:openai/gsm8k@test', hub_root=sys.argv[1], cache_dir=sys.argv[2]); "
            "print(len(r.problems), len(r.bad_rows))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    out = subprocess.run([sys.executable, "-c", code, str(hub_root), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "1"]
