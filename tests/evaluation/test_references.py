"""Published figures: the bundled file validates, matching is by benchmark only, setting differences are named."""

import json

import pytest

from mathgrpo.evaluation.references import (
    BENCHMARKS, ReferenceDataError, benchmark_of, differences, load_references, matching, same_model,
)

GREEDY_0SHOT = {"shots": 0, "greedy": True}


def test_the_bundled_figures_load_and_name_their_source():
    refs = load_references()
    assert len(refs) >= 10
    assert {r.benchmark for r in refs} <= set(BENCHMARKS)
    assert all(r.source.strip() and 0 <= r.value <= 100 for r in refs)
    by = {(r.model, r.benchmark, r.prompting): r.value for r in refs}
    # Spot checks against the sources (Qwen3 report Table 7, DeepSeekMath Table 5).
    assert by[("Qwen/Qwen3-4B-Base", "gsm8k", "CoT")] == 87.79
    assert by[("deepseek-ai/deepseek-math-7b-rl", "math", "CoT")] == 51.7


@pytest.mark.parametrize("spec, bench", [
    ("gsm8k", "gsm8k"), ("gsm8k@test", "gsm8k"), ("math500", "math500"), ("hub:openai/gsm8k", "gsm8k"),
    ("hub:openai/gsm8k:main@test", "gsm8k"), ("hub:HuggingFaceH4/MATH-500", "math500"),
    ("gsm8k@train", None), ("hub:openai/gsm8k@train", None), ("procedural:arith", None), ("my.jsonl", None),
])
def test_benchmark_of_a_spec(spec, bench):
    assert benchmark_of(spec) == bench


def test_matching_is_by_benchmark_and_math_is_not_math500():
    refs = load_references()
    for spec, bench in (("gsm8k", "gsm8k"), ("math500", "math500")):
        rows = matching(spec, GREEDY_0SHOT, (("", "someone/else"),), refs)
        want = [r for r in refs if r.benchmark == bench]
        assert len(rows) == len(want) > 0
        assert {r["model"] for r in rows} == {r.model for r in want}
    math500 = {r["source"] for r in matching("math500", GREEDY_0SHOT, (), refs)}
    assert not math500 & {r.source for r in refs if r.benchmark == "math"}
    assert matching("procedural:arith", GREEDY_0SHOT, (), refs) == []


def test_the_evaluated_models_own_figures_come_first_and_are_marked(tmp_path):
    rows = matching("gsm8k", GREEDY_0SHOT, (("", "Qwen/Qwen3-4B-Base"),))
    assert rows[0]["model"] == "Qwen/Qwen3-4B-Base" and rows[0]["whose"] == "this model"
    assert all(not r["whose"] for r in rows[1:])
    local = tmp_path / "deepseek-math-7b-rl"
    local.mkdir()
    rows = matching("gsm8k", GREEDY_0SHOT, (("A", "Qwen/Qwen3-4B-Base"), ("B", str(local))))
    marked = {(r["model"], r["whose"]) for r in rows if r["whose"]}
    assert ("Qwen/Qwen3-4B-Base", "A") in marked and ("deepseek-ai/deepseek-math-7b-rl", "B") in marked
    assert not same_model(str(tmp_path / "missing" / "deepseek-math-7b-rl"), "deepseek-ai/deepseek-math-7b-rl")


def test_setting_differences_are_named():
    refs = {(r.model, r.benchmark, r.prompting): r for r in load_references()}
    base = refs[("Qwen/Qwen3-4B-Base", "gsm8k", "CoT")]
    assert base.setting() == "4-shot CoT, accuracy"
    assert differences(base, GREEDY_0SHOT) == "4-shot (ours 0-shot); decoding not stated (ours greedy)"
    thinking = refs[("Qwen/Qwen3-4B", "math500", "thinking mode")]
    assert differences(thinking, {"shots": 0, "greedy": False}) == "shots not stated (ours 0)"
    assert differences(thinking, GREEDY_0SHOT).endswith("sampled (ours greedy)")


GOOD = {"model": "a/b", "benchmark": "gsm8k", "value": 50.0, "shots": 4, "prompting": "CoT", "metric": "accuracy",
        "decoding": None, "source": "Paper, arXiv:0000.00000, Table 1"}


@pytest.mark.parametrize("change, message", [
    ({"benchmark": "MATH-500"}, "benchmark 'MATH-500' is not one of gsm8k, math, math500"),
    ({"value": 150}, "value 150 is not a percentage"),
    ({"value": "87.8"}, "value is '87.8', of the wrong type"),
    ({"source": " "}, "source is empty"),
    ({"decoding": "beam"}, "decoding 'beam' is not greedy, sampled or null"),
    ({"shots": -1}, "shots -1 is negative"),
    ({"year": 2025}, "unknown year"),
])
def test_a_broken_file_is_a_clear_error(tmp_path, change, message):
    path = tmp_path / "refs.json"
    path.write_text(json.dumps({"references": [GOOD, {**GOOD, **change}]}))
    with pytest.raises(ReferenceDataError, match="references\\[1\\]") as err:
        load_references(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_missing_fields_and_unreadable_files(tmp_path):
    path = tmp_path / "refs.json"
    path.write_text(json.dumps({"references": [{k: v for k, v in GOOD.items() if k != "source"}]}))
    with pytest.raises(ReferenceDataError, match=r"references\[0\]: missing source"):
        load_references(path)
    path.write_text("{not json")
    with pytest.raises(ReferenceDataError, match="cannot read the reference figures"):
        load_references(path)
    path.write_text(json.dumps([GOOD]))
    with pytest.raises(ReferenceDataError, match='a list under "references"'):
        load_references(path)
    path.write_text(json.dumps({"references": [GOOD]}))
    assert [r.model for r in load_references(path)] == ["a/b"]
