"""Reports and `eval --compare` on results folders written by hand (known right/wrong sets)."""

import base64
import json
import re
from pathlib import Path

import pytest

from mathgrpo.cli import main as cli
from mathgrpo.evaluation.metrics import summarise
from mathgrpo.evaluation.pages import ANSWER_CHARS, slug
from mathgrpo.evaluation.report import curves_of_model, read_curves, write_report

SETTINGS = {"model": "m", "n": 1, "greedy": True, "temperature": None, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
            "max_new_tokens": 16, "shots": 0, "shots_source": None, "format": "reasoning", "system_prompt": None,
            "template": "auto", "seed": 0}


def record(bench, pid, correct, answer, sample=0, meta=None, gold="7"):
    return {"bench": bench, "id": pid, "sample": sample, "question": f"question {pid}?", "gold": gold,
            "completion": f"[REASONING]...[ANSWER]{answer}", "answer": answer, "correct": correct,
            "verdict": "correct" if correct else "wrong", "well_formed": True, "length": 12, "finished": True,
            "meta": meta or {}}


def results_folder(path: Path, model: str, recs: list, run_dir=None) -> Path:
    """A results folder as `mathgrpo eval` writes it, from per-sample records."""
    path.mkdir(parents=True)
    (path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    benches = {}
    for bench in dict.fromkeys(r["bench"] for r in recs):
        mine = [r for r in recs if r["bench"] == bench]
        benches[bench] = {**summarise(mine, ks=[1]), "problem_ids": list(dict.fromkeys(r["id"] for r in mine))}
    metrics = {"model": model, "model_path": model, "run_dir": str(run_dir) if run_dir else None,
               "settings": SETTINGS, "engine": "hf", "benchmarks": benches, "grading": {}, "elapsed_s": 1.0}
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


# A right on p3 and p4; B right on p1, p2 and p3: B fixed p1, p2 and broke p4; p5 wrong in both.
A_RIGHT = {"p3", "p4"}
B_RIGHT = {"p1", "p2", "p3"}
IDS = ["p1", "p2", "p3", "p4", "p5"]


def pair(tmp_path, b_ids=IDS, b_gold="7"):
    a = results_folder(tmp_path / "A", "base", [record("gsm8k", i, i in A_RIGHT, "7" if i in A_RIGHT else "3") for i in IDS])
    b = results_folder(tmp_path / "B", "tuned", [record("gsm8k", i, i in B_RIGHT, "7" if i in B_RIGHT else "3", gold=b_gold)
                                                 for i in b_ids])
    return a, b


def test_compare_fixed_broken_and_difference(tmp_path, capsys):
    a, b = pair(tmp_path)
    assert cli(["eval", "--compare", str(a), str(b)]) == 0
    result = json.loads((b / "compare.json").read_text())["benchmarks"]["gsm8k"]
    assert [r["id"] for r in result["fixed"]] == ["p1", "p2"]
    assert [r["id"] for r in result["broken"]] == ["p4"]
    assert result["accuracy_a"] == pytest.approx(2 / 5) and result["accuracy_b"] == pytest.approx(3 / 5)
    assert result["diff"] == pytest.approx(1 / 5)
    assert result["ci"][0] <= result["diff"] <= result["ci"][1] and result["resamples"] == 2000
    assert result["warning"] is None
    out = capsys.readouterr().out
    assert "fixed" in out and "+20.0" in out
    md = (b / "compare.md").read_text()
    assert "gsm8k: fixed (2)" in md and "gsm8k: broken (1)" in md and "| p4 |" in md
    html = (b / "compare.html").read_text()
    assert "data:image/png;base64," in html and 'src="plots/' not in html
    # Same command again gives the same interval: the bootstrap is seeded.
    assert cli(["eval", "--compare", str(a), str(b), "--output", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "compare.json").read_text())["benchmarks"]["gsm8k"]["ci"] == result["ci"]


def test_compare_cuts_rambling_answers_in_its_tables(tmp_path):
    """B broke p1 with an answer running on for 300 characters: cut in compare.md and .html, whole in compare.json."""
    a = results_folder(tmp_path / "A", "base", [record("gsm8k", "p1", True, "7")])
    b = results_folder(tmp_path / "B", "tuned", [record("gsm8k", "p1", False, "3" * 300)])
    assert cli(["eval", "--compare", str(a), str(b)]) == 0
    assert json.loads((b / "compare.json").read_text())["benchmarks"]["gsm8k"]["broken"][0]["answer_b"] == "3" * 300
    cut = "3" * ANSWER_CHARS + f" ... [{300 - ANSWER_CHARS} more characters]"
    assert f"| p1 | 7 | 7 | {cut} | question p1? |" in (b / "compare.md").read_text()
    assert "3" * (ANSWER_CHARS + 1) not in (b / "compare.html").read_text()


def test_compare_on_shared_problems_warns(tmp_path, capsys):
    a, b = pair(tmp_path, b_ids=["p1", "p2", "p3"])
    assert cli(["eval", "--compare", str(a), str(b)]) == 0
    assert "problem sets differ (A 5, B 3, shared 3)" in capsys.readouterr().out
    result = json.loads((b / "compare.json").read_text())["benchmarks"]["gsm8k"]
    assert result["shared"] == 3 and result["only_a"] == 2
    assert [r["id"] for r in result["fixed"]] == ["p1", "p2"] and result["broken"] == []
    assert "Warning: gsm8k: problem sets differ" in (b / "compare.md").read_text()


def test_compare_refuses_what_cannot_be_compared(tmp_path, capsys):
    a, b = pair(tmp_path, b_gold="8")
    assert cli(["eval", "--compare", str(a), str(b)]) == 2
    assert "different data" in capsys.readouterr().err
    c = results_folder(tmp_path / "C", "other", [record("gsm8k", "q9", True, "7")])
    assert cli(["eval", "--compare", str(a), str(c)]) == 2
    assert "none shared" in capsys.readouterr().err
    assert cli(["eval", "--compare", str(a), str(tmp_path / "missing")]) == 2
    assert "no metrics.json" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("mine")
    a, b = pair(tmp_path / "ok")
    assert cli(["eval", "--compare", str(a), str(b), "--output", str(mine)]) == 2
    assert "not a results or comparison folder" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.md"]


def test_report_is_self_contained_with_math_groups_and_curves(tmp_path):
    run = tmp_path / "run"
    (run / "grpo").mkdir(parents=True)
    (run / "sft").mkdir()
    (run / "grpo" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1 / s, "reward": s / 10, "phase": "grpo"}) + "\n" for s in range(1, 8))
        + '{"step": 8, "rew'  # a live run's torn last line
    )
    (run / "sft" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    recs = [record("math500", f"m{i}", i % 2 == 0, "7", meta={"subject": ["Algebra", "Geometry"][i % 2], "level": 1 + i % 3})
            for i in range(6)]
    out = results_folder(tmp_path / "R", "tuned", recs, run_dir=run)
    curves = read_curves(run)
    assert list(curves) == ["grpo/reward", "sft/loss", "grpo/loss"]
    assert curves["grpo/reward"][0] == list(range(1, 8))
    page = write_report(out)
    html = page.read_text()
    md = (out / "report.md").read_text()
    for name in ("accuracy", "math500-level", "math500-subject", "lengths", "training"):
        assert (out / "plots" / f"{name}.png").is_file() and f"plots/{name}.png" in md
    images = html.split('src="data:image/png;base64,')[1:]
    assert len(images) == 5 and 'src="plots/' not in html
    assert base64.b64decode(images[0].split('"')[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| Algebra | 3 | 100.0% |" in md and "| Geometry | 3 | 0.0% |" in md
    assert "&lt;" not in md and "question m0?" in html


def test_report_has_every_section_the_samples_and_the_settings(tmp_path):
    """Contents links, every sample in the browser with a link to samples.jsonl, the settings and seeds as a
    table, the full configuration and the training run's config folded."""
    run = tmp_path / "run"
    (run / "grpo").mkdir(parents=True)
    (run / "grpo" / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": s, "lr": 1e-3}) + "\n"
                                                        for s in range(1, 5)))
    (run / "config.yaml").write_text("run:\n  seed: 3\n")
    recs = [record("gsm8k", f"q{i}", i % 3 == 0, "7" if i % 3 == 0 else "3") for i in range(30)]
    out = results_folder(tmp_path / "R", "m", recs, run_dir=run)
    (out / "eval_config.json").write_text(json.dumps({"config": {"eval": {"limit": 30, "seed": 0}, "run": {"seed": 0}}}))
    html = write_report(out).read_text()
    md = (out / "report.md").read_text()
    titles = re.findall(r'<h2 id="[^"]+">([^<]+)</h2>', html)
    assert titles == ["Results", "Published figures (not measured here)", "Samples", "Completion length (tokens)",
                      "Training curves", "Settings", "Grading"]
    assert all(f'href="#{slug(t)}"' in html.split("</nav>")[0] for t in titles)
    browser = html.split('<table id="samples-table"', 1)[1].split("</table>", 1)[0]
    assert browser.count('data-verdict="correct"') == 10 and browser.count('data-verdict="wrong"') == 20
    assert '<a href="samples.jsonl">' in html and "[samples.jsonl](samples.jsonl)" in md
    settings = _section(md, "Settings")
    for row in ("| eval.seed (subsets, sampling) | 0 |", "| eval.limit | 30 |", "| rollout.max_new_tokens | 16 |",
                "| format.template | auto |"):
        assert row in settings, row
    assert "<summary>Full configuration (eval_config.json)</summary>" in settings and "limit: 30" in settings
    assert f"Training run configuration ({run / 'config.yaml'})" in settings and "seed: 3" in settings
    assert "| training run's run.seed | 3 |" in settings
    assert "| grpo/lr | 0.001 | 4 |" in _section(md, "Training curves")


def test_compare_pages_long_lists_of_fixed_problems(tmp_path):
    """60 fixed problems: every one in compare.html's paged table, the first 50 in compare.md."""
    ids = [f"p{i:02d}" for i in range(60)]
    a = results_folder(tmp_path / "A", "base", [record("gsm8k", i, False, "3") for i in ids])
    b = results_folder(tmp_path / "B", "tuned", [record("gsm8k", i, True, "7") for i in ids])
    assert cli(["eval", "--compare", str(a), str(b)]) == 0
    html = (b / "compare.html").read_text()
    fixed = html.split("<summary>gsm8k: fixed (60)</summary>", 1)[1].split("</details>", 1)[0]
    assert 'data-page="25"' in fixed and fixed.count("<tr>") == 61  # the header and every problem
    assert "<summary>gsm8k: broken (0)</summary>\n<p>none</p>" in html
    md = (b / "compare.md").read_text()
    assert "| p49 |" in md and "| p50 |" not in md and "... and 10 more in compare.json" in md


def test_report_of_groups_at_0_and_100_percent(tmp_path):
    """The sizes that made matplotlib reject negative error bars (11 at 0%, 6 at 100%) give a report."""
    from mathgrpo.evaluation.metrics import accuracy_with_ci
    from mathgrpo.evaluation.report import error_bars

    for n in range(1, 1001):
        assert min(min(side) for side in error_bars([accuracy_with_ci([v] * n, True) for v in (0.0, 1.0)])) >= 0
    recs = [record("math500", f"a{i}", False, "3", meta={"level": 1, "subject": "Algebra"}) for i in range(11)]
    recs += [record("math500", f"b{i}", True, "7", meta={"level": 2, "subject": "Geometry"}) for i in range(6)]
    out = results_folder(tmp_path / "R", "m", recs)
    assert write_report(out).is_file()
    assert "| 1 | 11 | 0.0% |" in (out / "report.md").read_text()


def test_report_polish_curves_warnings_and_html(tmp_path):
    """Key curves first; constant ones (kl 0, a fixed lr) a table of values, not panels; other changing ones folded;
    warnings for cut completions, <code> instead of backticks, labelled 0% bars, integer histogram ticks."""
    from mathgrpo.evaluation.report import accuracy_figure, curve_blocks, length_figure, read_curves, split_curves

    run = tmp_path / "run"
    (run / "grpo").mkdir(parents=True)
    rows = [{"step": s, "reward": (s % 7) / 7, "loss": 1 / s, "kl": 0.0, "grad_norm": 0.3 + s % 3, "lr": 1e-3,
             "kept_fraction": 1.0, "reference_time": 1e-6 * (s % 5), "accuracy": s / 100} for s in range(1, 61)]
    (run / "grpo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = read_curves(run)
    assert list(curves)[:6] == ["grpo/accuracy", "grpo/reward", "grpo/loss", "grpo/kl", "grpo/grad_norm", "grpo/lr"]
    key, rest, constant, once = split_curves(curves)
    assert list(key) == ["grpo/accuracy", "grpo/reward", "grpo/loss", "grpo/grad_norm"]
    assert list(rest) == ["grpo/reference_time"]
    assert constant == {"grpo/kl": 0.0, "grpo/lr": 1e-3, "grpo/kept_fraction": 1.0} and once == {}
    blocks = curve_blocks(str(run), curves)
    constants = [b for b in blocks if b[0] == "table"][0]
    assert constants[2] == [["grpo/kl", "0", 60], ["grpo/lr", "0.001", 60], ["grpo/kept_fraction", "1", 60]]
    folded = [b for b in blocks if b[0] == "fold"][0]
    assert folded[1] == "Other logged quantities (1)" and [b[0] for b in folded[2]] == ["img"]
    recs = [record("gsm8k", f"q{i}", False, "3") for i in range(4)]
    for r in recs:
        r["finished"] = False
    out = results_folder(tmp_path / "R", "m", recs, run_dir=run)
    html = write_report(out).read_text()
    md = (out / "report.md").read_text()
    assert "Warning: gsm8k: 100.0% of completions were cut at 16 tokens" in md
    assert "<code>m</code>" in html and "`m`" not in html.split("<body>")[1]
    assert "<details><summary>Other logged quantities" in html and "<details><summary>Other logged quantities" in md
    assert "td{white-space:nowrap}" in html
    metrics = json.loads((out / "metrics.json").read_text())["benchmarks"]
    fig = accuracy_figure(metrics)
    assert [t.get_text() for t in fig.axes[0].texts] == ["0.0%"]  # a 0% bar still shows its value
    ticks = length_figure(metrics).axes[0].get_yticks()
    assert all(float(t).is_integer() for t in ticks)


def _section(md: str, title: str) -> str:
    """The text of a level-2 section of a Markdown report, up to the next level-2 heading."""
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_report_shows_published_figures_apart_and_never_as_measured(tmp_path):
    recs = [record("gsm8k", f"q{i}", i < 2, "7" if i < 2 else "3") for i in range(4)]
    recs += [record("math500", f"m{i}", True, "7", meta={"level": 1, "subject": "Algebra"}) for i in range(2)]
    out = results_folder(tmp_path / "R", "Qwen/Qwen3-4B-Base", recs)
    write_report(out)
    md = (out / "report.md").read_text()
    title = "Published figures (not measured here)"
    assert md.index("## Results") < md.index(f"## {title}")
    section = _section(md, title)
    assert "None was measured by mathgrpo" in section
    # The model's own figure first and marked, with its setting and how it differs from this 0-shot greedy run.
    assert ("| Qwen/Qwen3-4B-Base (this model) | 87.79% | 4-shot CoT, accuracy | 4-shot (ours 0-shot); decoding not "
            "stated (ours greedy) | Qwen3 Technical Report, arXiv:2505.09388, Table 7") in section
    assert "| deepseek-ai/deepseek-math-7b-rl | 88.2% |" in section
    # MATH-500 gets MATH-500 figures only; the full MATH test set's are named as left out.
    math500 = section.split("### math500", 1)[1]
    assert "Qwen/Qwen3-4B (thinking" not in math500 and "| Qwen/Qwen3-4B | 97% | shots not stated, thinking mode, accuracy, sampled |" in math500
    assert "54.1%" not in math500 and "not shown beside MATH-500" in math500
    # Outside the section no published number appears: the results table holds our numbers only.
    rest = md.replace(section, "")
    assert "87.79" not in rest and "88.2%" not in rest
    published = (out / "report.html").read_text().split(f'<h2 id="{slug(title)}">', 1)[1].split("<h2", 1)[0]
    # prose in every column: tables of words, whose cells wrap (as number tables they ran off the page)
    assert published.count("<table") == published.count('<table class="text">') == 2


def test_references_off_and_benchmarks_without_figures(tmp_path):
    recs = [record("gsm8k", "q1", True, "7")]
    out = results_folder(tmp_path / "R", "m", recs)
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps({**metrics, "references": False}))
    write_report(out)
    assert "Published figures" not in (out / "report.md").read_text()
    other = results_folder(tmp_path / "P", "m", [record("procedural_arith", "a1", True, "7")])
    write_report(other)
    assert "Published figures" not in (other / "report.md").read_text()


def test_compare_shows_published_figures_for_shared_benchmarks(tmp_path, capsys):
    a, b = pair(tmp_path)
    for folder, path in ((a, "Qwen/Qwen3-4B-Base"), (b, "runs/x/ckpt-000010/model")):
        metrics = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps({**metrics, "model_path": path}))
    assert cli(["eval", "--compare", str(a), str(b)]) == 0
    printed = capsys.readouterr().out
    assert "Published figures (not measured here)" in printed and "Qwen/Qwen3-4B-Base (A)" in printed
    md = (b / "compare.md").read_text()
    section = _section(md, "Published figures (not measured here)")
    # A's base model is marked A; the setting is compared with B's (0-shot greedy).
    assert "| Qwen/Qwen3-4B-Base (A) | 87.79% | 4-shot CoT, accuracy | 4-shot (B 0-shot); decoding not stated (B greedy)" \
        in section and "| differs from B |" in section
    assert cli(["eval", "--compare", str(a), str(b), "--output", str(tmp_path / "C"), "eval.references=false"]) == 0
    assert "Published figures" not in capsys.readouterr().out
    assert "Published figures" not in (tmp_path / "C" / "compare.md").read_text()


def test_a_model_gets_the_curves_of_the_training_that_made_it(tmp_path):
    """The warm-up model's report shows no GRPO curves (they came after it); a checkpoint's stops at its step."""
    run = tmp_path / "run"
    curves = {"sft/loss": ([1, 2, 3], [3.0, 2.0, 1.0]), "grpo/reward": ([0, 1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4, 0.5])}
    assert curves_of_model(curves, str(run / "sft" / "model")) == {"sft/loss": curves["sft/loss"]}
    ckpt = curves_of_model(curves, str(run / "grpo" / "checkpoints" / "ckpt-000002" / "model"))
    assert ckpt == {"sft/loss": curves["sft/loss"], "grpo/reward": ([0, 1, 2], [0.1, 0.2, 0.3])}
    early = curves_of_model(curves, str(run / "sft" / "checkpoints" / "ckpt-000001" / "model"))
    assert early == {"sft/loss": ([1], [3.0])}
    assert curves_of_model(curves, str(tmp_path / "elsewhere")) == curves


def test_a_series_logged_once_is_not_called_constant(tmp_path):
    """Held-out accuracy logged once (at step 8) and a one-step warm-up: a table of value and step apart from the
    quantities that held one value at every one of several steps."""
    run = tmp_path / "run"
    (run / "grpo").mkdir(parents=True)
    (run / "sft").mkdir()
    rows = [{"step": s, "reward": s / 10, "lr": 1e-3} for s in range(1, 9)] + [{"step": 8, "heldout_accuracy": 0.45}]
    (run / "grpo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "sft" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    out = results_folder(tmp_path / "R", "m", [record("gsm8k", "q1", True, "7")], run_dir=run)
    write_report(out)
    curves = _section((out / "report.md").read_text(), "Training curves")
    constant = curves.split("The same value at every logged step:", 1)[1].split("Logged once:", 1)[0]
    assert "| grpo/lr | 0.001 | 8 |" in constant and "heldout_accuracy" not in constant and "sft/loss" not in constant
    once = curves.split("Logged once:", 1)[1]
    assert "| quantity | value | step |" in once
    assert "| grpo/heldout_accuracy | 0.45 | 8 |" in once and "| sft/loss | 2 | 1 |" in once


def test_compare_pages_link_compare_json_beside_them(tmp_path):
    """compare.html and compare.md link the compare.json written beside them (relative, so the folder can move)."""
    a, b = pair(tmp_path)
    out = tmp_path / "elsewhere"
    assert cli(["eval", "--compare", str(a), str(b), "--output", str(out)]) == 0
    assert (out / "compare.json").is_file()
    assert '<a href="compare.json">compare.json</a>' in (out / "compare.html").read_text()
    assert "[compare.json](compare.json)" in (out / "compare.md").read_text()
