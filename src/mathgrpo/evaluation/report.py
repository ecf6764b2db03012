"""Reports of a results folder: `report.md` (plots as PNG files beside it) and a self-contained `report.html`.

The content of the reports, as blocks that `pages` renders twice (Markdown and one HTML file).
Sections: results (accuracy per benchmark with 95% intervals, MATH accuracy by level and subject),
published figures, the samples (a link to samples.jsonl; in the HTML every sample, filterable), completion
lengths, the training curves of the run folder the model came from (changing ones plotted two to a row,
constant ones and those logged once in tables), the prompt, the settings and seeds, the grading. Warnings come
right after the settings line: prompts longer than model.max_seq_length allows, most completions cut at
max_new_tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..runs import model_place  # noqa: E402
from ..tracking import read_jsonl  # noqa: E402
from .pages import ANSWER_CHARS, clip, code, fold, h, image, link, p, paged, samples, table, write_pages  # noqa: E402

MAX_CURVES = 16  # training-curve panels per figure; the rest are listed by name
SMOOTH_FROM = 30  # points a curve needs before a moving mean is drawn over it
CURVE_COLUMNS = 2  # panels a row: each about 600 pixels wide, readable at a normal window width
EXAMPLES_PER_BENCH = 2
EXAMPLE_CHARS = 600
SAMPLES_SHOWN = 5000  # samples the HTML browses; samples.jsonl holds them all


# --- plots -------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def error_bars(stats: list) -> list:
    """[[below], [above]] the accuracy in points for matplotlib, never negative (an interval rounded past it)."""
    return [[max(0.0, 100 * (s["accuracy"] - s["ci"][0])) for s in stats],
            [max(0.0, 100 * (s["ci"][1] - s["accuracy"])) for s in stats]]


def _bars(ax: Any, labels: list, stats: list, horizontal: bool = False) -> None:
    """Accuracy bars (percent) with their 95% intervals as error bars."""
    acc = [100 * s["accuracy"] for s in stats]
    err = error_bars(stats)
    if horizontal:
        bars = ax.barh(labels, acc, xerr=err, capsize=3, color="#4c72b0")
        ax.set_xlabel("accuracy (%)")
        ax.set_xlim(0, 100)
    else:
        bars = ax.bar(labels, acc, yerr=err, capsize=4, color="#4c72b0")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
    # the value on every bar: a 0% bar has no height to see
    ax.bar_label(bars, labels=[f"{a:.1f}%" for a in acc], padding=3, fontsize=8)


def accuracy_figure(benches: dict) -> Any:
    """Accuracy per benchmark with 95% intervals."""
    fig, ax = plt.subplots(figsize=(max(3.5, 1.6 * len(benches)), 3.2))
    _bars(ax, list(benches), list(benches.values()))
    ax.set_title("accuracy per benchmark (95% CI)")
    return fig


def grouped_figure(groups: dict, title: str, horizontal: bool) -> Any:
    """Accuracy per group (MATH level or subject) with 95% intervals."""
    labels = list(groups)
    size = (6, 0.4 * len(labels) + 1.2) if horizontal else (max(4, 0.9 * len(labels)), 3.2)
    fig, ax = plt.subplots(figsize=size)
    _bars(ax, labels, [groups[k] for k in labels], horizontal)
    ax.set_title(title)
    return fig


def length_figure(benches: dict) -> Any:
    """Histogram of completion lengths (tokens), one panel per benchmark."""
    fig, axes = plt.subplots(1, len(benches), figsize=(3.6 * len(benches), 2.8), squeeze=False)
    for ax, (key, m) in zip(axes[0], benches.items()):
        hist = m["length"]["histogram"]
        if hist["counts"]:
            edges = hist["edges"]
            ax.bar(edges[:-1], hist["counts"], width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge",
                   color="#55a868", edgecolor="white")
        ax.set_title(key)
        ax.set_xlabel("completion tokens")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no fractional ticks
    axes[0][0].set_ylabel("samples")
    return fig


# The curves a reader looks at first, in this order; every other logged number is folded away.
KEY_CURVES = ("heldout_accuracy", "dev_accuracy", "accuracy", "reward", "loss", "kl", "grad_norm", "lr",
              "completion_length", "truncated_fraction", "clip_fraction", "format_rate")


def read_curves(run_dir: Path) -> dict:
    """Numeric series by `<stage>/<key>` from every metrics.jsonl in a run folder: {name: ([step], [value])},
    the key curves first (KEY_CURVES order, warm-up before GRPO within a key), then the rest by name."""
    series: dict = {}
    for path in sorted(Path(run_dir).glob("**/metrics.jsonl")):
        stage = path.parent.relative_to(run_dir).as_posix().replace("/", "-") or "run"
        for n, row in enumerate(read_jsonl(path)):  # a torn last line of a live run is skipped
            step = row.get("step", n)
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    xs, ys = series.setdefault(f"{stage}/{key}", ([], []))
                    xs.append(step)
                    ys.append(value)

    def rank(name: str) -> tuple:
        stage, key = name.split("/", 1)
        return (KEY_CURVES.index(key) if key in KEY_CURVES else len(KEY_CURVES), stage != "sft", name)

    return dict(sorted(series.items(), key=lambda kv: rank(kv[0])))


def curves_of_model(curves: dict, model_path: str) -> dict:
    """The part of a run's curves (`read_curves`) that made the model at `model_path`: a warm-up model (`sft/model`,
    a warm-up checkpoint) has the warm-up's only, a checkpoint its stage's up to its step; any other model all."""
    place = model_place(Path(model_path))
    if place is None:
        return curves
    stage, step = place.stage, place.step
    kept = {}
    for name, (xs, ys) in curves.items():
        of = name.split("/", 1)[0]
        if stage == "sft" and of != "sft":  # the warm-up model never saw GRPO
            continue
        if of == stage and step is not None:
            xs, ys = [x for x in xs if x <= step], [y for x, y in zip(xs, ys) if x <= step]
        if xs:
            kept[name] = (xs, ys)
    return kept


def is_constant(ys: list) -> bool:
    """True when a logged series holds one value throughout (to rounding): a table row, not a panel."""
    return max(ys) - min(ys) <= 1e-12 * max(1.0, abs(max(ys)), abs(min(ys)))


def split_curves(series: dict) -> tuple:
    """(key curves, other curves, {name: value} of the constant ones, {name: (step, value)} of those logged once):
    the first two change over the run; a constant one held its value over several steps."""
    once = {n: (s[0][0], s[1][0]) for n, s in series.items() if len(s[1]) == 1}
    constant = {n: s[1][0] for n, s in series.items() if n not in once and is_constant(s[1])}
    changing = {n: s for n, s in series.items() if n not in constant and n not in once}
    key = {n: s for n, s in changing.items() if n.split("/", 1)[1] in KEY_CURVES}
    return key, {n: s for n, s in changing.items() if n not in key}, constant, once


def smooth(ys: list) -> tuple:
    """(window, moving average) of a noisy series: a window of about a twentieth of its length, at least 2; a
    series of fewer than SMOOTH_FROM points (held-out accuracy now and then, a short run) is left as logged."""
    window = max(2, len(ys) // 20)
    if len(ys) < SMOOTH_FROM:
        return 1, np.asarray(ys, dtype=float)
    kernel = np.ones(window) / window
    return window, np.convolve(np.asarray(ys, dtype=float), kernel, mode="valid")


def curves_figure(series: dict) -> Any:
    """Small multiples, CURVE_COLUMNS a row: value against step (faint: as logged; line: moving mean)."""
    names = list(series)[:MAX_CURVES]
    cols = min(CURVE_COLUMNS, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        xs, ys = series[name]
        window, mean = smooth(ys)
        if window > 1:
            ax.plot(xs, ys, lw=0.9, alpha=0.3, color="#4c72b0")
            ax.plot(xs[window - 1:], mean, lw=1.8, color="#4c72b0")
        else:
            ax.plot(xs, ys, marker="o", ms=4, lw=1.6, color="#4c72b0")
        ax.set_title(name, fontsize=12)
        ax.set_xlabel("step", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(set(xs)) == 1:
            ax.set_xlim(xs[0] - 1, xs[0] + 1)  # one step: whole-number ticks around it
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.25)
    fig.tight_layout(h_pad=1.6, w_pad=2.0)
    return fig


def curve_blocks(run_dir: str, curves: dict) -> list:
    """The training curves: the key ones plotted, the other changing ones folded, the constant ones and those logged
    once in tables."""
    key, rest, constant, once = split_curves(curves)
    blocks = [h(2, "Training curves"),
              p(f"From `{run_dir}`. Faint lines are the values as logged, solid lines their moving mean; a curve of "
                f"fewer than {SMOOTH_FROM} points (held-out accuracy, a short run) is drawn as logged, with dots.")]
    if key:
        blocks.append(image("training", curves_figure(key)))
    if constant:
        blocks += [p("The same value at every logged step:"),
                   table(["quantity", "value", "steps logged"],
                         [[n, f"{v:g}", len(curves[n][0])] for n, v in constant.items()])]
    if once:
        blocks += [p("Logged once:"), table(["quantity", "value", "step"], [[n, f"{v:g}", x] for n, (x, v) in once.items()])]
    if rest:
        folded = [image("training-other", curves_figure(rest))]
        if len(rest) > MAX_CURVES:
            folded.append(p("Not plotted: " + ", ".join(list(rest)[MAX_CURVES:])))
        blocks.append(fold(f"Other logged quantities ({len(rest)})", folded))
    return blocks


# --- published figures (not measured here) ----------------------------------------------------------------

REFERENCES_TITLE = "Published figures (not measured here)"


def reference_blocks(specs: dict, settings: dict, model_paths: tuple, against: str = "this run") -> list:
    """The section of published figures for the benchmarks `specs` ({key: spec}), or [] when none has any.

    `settings`: the run's settings (shots, greedy) the sources' settings are compared with; `model_paths`:
    (label, path) of the evaluated models, whose own figures are marked and listed first.
    """
    from .references import matching, other_benchmark_note

    blocks = []
    for key, spec in specs.items():
        rows = matching(spec, settings, model_paths, who="ours" if against == "this run" else against)
        if rows:
            blocks += [h(3, key), table(
                ["model", "published", "setting", f"differs from {against}", "source"],
                [[f"{r['model']} ({r['whose']})" if r["whose"] else r["model"], f"{r['value']:g}%", r["setting"],
                  r["differs"] or "same shots and decoding", r["source"] + (f"; {r['note']}" if r["note"] else "")]
                 for r in rows], text=True)]
        note = other_benchmark_note(spec)
        if note:
            blocks.append(p(note))
    if not blocks:
        return []
    intro = ("Figures the models' authors published for the same benchmark, with their own prompts, answer "
             "extraction and decoding. None was measured by mathgrpo; they are context for the numbers above, "
             "not results of this evaluation. Where a source's shots or decoding differ from "
             f"{against}'s, the difference is named.")
    return [h(2, REFERENCES_TITLE), p(intro)] + blocks


# --- the evaluation report -----------------------------------------------------------------------------


def _settings_line(m: dict) -> str:
    s = m["settings"]
    sampling = ("greedy decoding, accuracy = pass@1" if s["greedy"] else
                f"{s['n']} samples per problem at temperature {s['temperature']}, accuracy = mean over samples, "
                f"maj@k votes over the first k")
    placed = ", instruction after the question" if s.get("instruction") == "user" else ""
    return (f"Model `{m['model_path']}`; {sampling}; {s['shots']}-shot; format {s['format']} ({s['template']} "
            f"template{placed}); up to {s['max_new_tokens']} new tokens; engine {m.get('engine')}; "
            f"{m.get('elapsed_s', '?')} s.")


def results_table(benches: dict) -> tuple:
    """The headline table: accuracy, CI, pass@k, maj@k, format, answered, truncated, lengths."""
    ks = sorted({k for m in benches.values() for k in m["pass@k"]}, key=int)
    many = any(m["samples_per_problem"] > 1 for m in benches.values())
    headers = ["benchmark", "problems", "accuracy", "95% CI"]
    if many:
        headers += [f"pass@{k}" for k in ks] + [f"maj@{k}" for k in ks]
    headers += ["format ok", "answered", "truncated", "mean len", "median len", "p90 len"]
    rows = []
    for key, m in benches.items():
        row = [key, m["problems"], _pct(m["accuracy"]), f"{_pct(m['ci'][0])} - {_pct(m['ci'][1])}"]
        if many:
            row += [_pct(m["pass@k"][k]) if k in m["pass@k"] else "" for k in ks]
            row += [_pct(m["maj@k"][k]) if k in m["maj@k"] else "" for k in ks]
        ln = m["length"]
        row += [_pct(m["format_adherence"]), _pct(m["answered"]), _pct(m["truncated"]),
                f"{ln['mean']:.0f}", f"{ln['median']:.0f}", f"{ln['p90']:.0f}"]
        rows.append(row)
    return table(headers, rows)


def group_blocks(key: str, m: dict) -> list:
    """Tables and plots of accuracy by MATH level and subject, where the benchmark has them."""
    blocks = []
    for field, title, horizontal in (("by_level", "level", False), ("by_subject", "subject", True)):
        groups = m.get(field)
        if not groups:
            continue
        blocks.append(h(3, f"{key}: accuracy by {title}"))
        blocks.append(table([title, "problems", "accuracy", "95% CI"],
                            [[g, s["problems"], _pct(s["accuracy"]), f"{_pct(s['ci'][0])} - {_pct(s['ci'][1])}"]
                             for g, s in groups.items()]))
        blocks.append(image(f"{key}-{title}", grouped_figure(groups, f"{key}: accuracy by {title} (95% CI)", horizontal)))
    return blocks


def example_blocks(key: str, records: list) -> list:
    """A right and a wrong sample (where there are), question, gold, answer and completion."""
    picks = [r for r in records if r["correct"]][:1] + [r for r in records if not r["correct"]][:1]
    blocks = []
    for r in picks[:EXAMPLES_PER_BENCH]:
        blocks.append(p(f"{key} / {r['id']} (sample {r['sample']}): {r['verdict']}; gold {r['gold']!r}, "
                        f"answer {r['answer']!r}, well formed: {r['well_formed']}, {r['length']} tokens"))
        blocks.append(code(f"Q: {clip(r['question'], EXAMPLE_CHARS)}\n\nA: {clip(r['completion'], EXAMPLE_CHARS)}"))
    return blocks


def read_records(out: Path, metrics: dict) -> dict:
    """Records of samples.jsonl by benchmark, only the problems metrics.json was computed on."""
    wanted = {key: set(m.get("problem_ids", [])) for key, m in metrics["benchmarks"].items()}
    by_bench: dict = {key: [] for key in wanted}
    path = out / "samples.jsonl"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                if r["id"] in wanted.get(r["bench"], ()):
                    by_bench[r["bench"]].append(r)
    return by_bench


TRUNCATED_WARNING = 0.5  # a warning when more than this share of completions hit max_new_tokens


def length_warnings(metrics: dict) -> list:
    """Per benchmark: prompts too long for model.max_seq_length, or most completions cut at max_new_tokens."""
    new_tokens = metrics["settings"]["max_new_tokens"]
    out = []
    for key, m in metrics["benchmarks"].items():
        limit, longest = m.get("max_seq_length"), m.get("longest_prompt")
        if limit and longest and longest + new_tokens > limit:
            out.append(f"{key}: the longest prompt ({longest} tokens) + {new_tokens} new tokens exceeds "
                       f"model.max_seq_length={limit} (fewer eval.shots, or a larger model.max_seq_length if the model "
                       "allows)")
        if m["truncated"] > TRUNCATED_WARNING:
            out.append(f"{key}: {_pct(m['truncated'])} of completions were cut at {new_tokens} tokens before an answer "
                       "could end; accuracy says little until rollout.max_new_tokens is raised")
    return out


def samples_blocks(records: dict) -> list:
    """Every sample (browsable and filterable in the HTML, a link to samples.jsonl), then a right and a wrong
    one per benchmark in full."""
    flat = [r for recs in records.values() for r in recs]
    examples = [b for key, recs in records.items() for b in example_blocks(key, recs)]
    blocks = [h(2, "Samples"), samples(flat, "samples.jsonl", SAMPLES_SHOWN)]
    if examples:
        blocks.append(fold("A right and a wrong sample per benchmark, in full", examples))
    return blocks


# Where each setting a sample depends on (metrics.json's "settings") is set; the others are named as they are.
SETTING_KEYS = {"model": "--model", "weights": "weights (fingerprint)", "sample_seeds": "sampled completions seeded",
                "n": "eval.n", "temperature": "rollout.temperature", "top_p": "rollout.top_p",
                "top_k": "rollout.top_k", "min_p": "rollout.min_p", "max_new_tokens": "rollout.max_new_tokens",
                "shots": "eval.shots", "shots_source": "eval.shots_source", "format": "format.preset",
                "system_prompt": "format.system_prompt", "template": "format.template",
                "instruction": "format.instruction", "seed": "eval.seed (subsets, sampling)"}


def settings_blocks(metrics: dict, eval_config: dict, run_dir: Optional[Path]) -> list:
    """The settings and seeds the samples depend on (and the training run's seeds), as a table; the whole
    configuration and the training run's configuration folded."""
    import yaml

    config = eval_config.get("config", {})
    rows = [[SETTING_KEYS.get(k, k), ("greedy" if k == "temperature" else "none") if v is None else v]
            for k, v in metrics["settings"].items() if k != "greedy"]
    rows += [["eval.limit", config.get("eval", {}).get("limit") or "none: every problem"],
             ["run.seed (built-in model, weights fingerprint)", config.get("run", {}).get("seed", "")],
             ["engine", metrics.get("engine", "")]]
    folded = [fold("Full configuration (eval_config.json)", [code(yaml.safe_dump(config, sort_keys=False))])] if config else []
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        text = (run_dir / "config.yaml").read_text(encoding="utf-8")
        trained = yaml.safe_load(text) or {}
        rows += [[f"training run's {key}.seed", trained.get(key, {}).get("seed", "")] for key in ("run", "data")]
        folded.append(fold(f"Training run configuration ({run_dir / 'config.yaml'})", [code(text)]))
    return [h(2, "Settings"), p("What the samples depend on (a rerun with other values starts a new results folder), "
                                "and the seeds:"), table(["setting", "value"], rows, text=True)] + folded


def prompt_blocks(prompts: dict) -> list:
    """Per benchmark: zero- or few-shot, the format, and one full prompt (nothing without prompt.json)."""
    blocks = [h(2, "Prompt")] if prompts else []
    for key, info in prompts.items():
        shots = f"{len(info['shots'])} worked examples from {info['shots_source']}" if info["shots"] else "zero-shot"
        blocks += [p(f"{key}: {shots}; format {info['format']}, {info['template']} template. "
                     f"Full prompt of {info['example_id']}:"), code(info["example_prompt"] or "")]
    return blocks


def report_blocks(metrics: dict, records: dict, prompts: dict, curves: dict, eval_config: Optional[dict] = None) -> list:
    """Every block of the evaluation report, in reading order."""
    benches = metrics["benchmarks"]
    blocks = [h(1, f"Evaluation: {metrics['model']}"), p(_settings_line(metrics))]
    blocks += [p(f"Warning: {w}") for w in length_warnings(metrics)]
    blocks += [h(2, "Results"), results_table(benches), image("accuracy", accuracy_figure(benches))]
    for key, m in benches.items():
        blocks += group_blocks(key, m)
    if metrics.get("references", True):
        blocks += reference_blocks({k: m.get("spec", k) for k, m in benches.items()}, metrics["settings"],
                                   (("", metrics.get("model_path", "")),))
    blocks += samples_blocks(records)
    blocks += [h(2, "Completion length (tokens)"), image("lengths", length_figure(benches))]
    if curves:
        blocks += curve_blocks(metrics["run_dir"], curves)
    blocks += prompt_blocks(prompts)
    blocks += settings_blocks(metrics, eval_config or {}, Path(metrics["run_dir"]) if metrics.get("run_dir") else None)
    g = metrics.get("grading", {})
    blocks += [h(2, "Grading"), p(f"{g.get('checks', 0)} answer checks: {g.get('string', 0)} by string, "
                                  f"{g.get('number', 0)} by number, {g.get('math_verify', 0)} by math-verify, "
                                  f"{g.get('timeouts', 0)} timeouts, {g.get('errors', 0)} errors (counted wrong).")]
    return blocks


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def write_report(out: Path, records: Optional[dict] = None) -> Path:
    """Write report.md (+ plots/) and report.html for the results folder `out`; return the HTML path."""
    out = Path(out)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    records = records if records is not None else read_records(out, metrics)
    run_dir = Path(metrics["run_dir"]) if metrics.get("run_dir") else None
    curves = curves_of_model(read_curves(run_dir), metrics.get("model_path", "")) if run_dir and run_dir.is_dir() else {}
    blocks = report_blocks(metrics, records, _read(out / "prompt.json"), curves, _read(out / "eval_config.json"))
    return write_pages(out, "report", blocks, f"Evaluation: {metrics['model']}")


# --- the comparison report -----------------------------------------------------------------------------

def diff_figure(benches: dict) -> Any:
    """B - A accuracy per benchmark with the paired bootstrap 95% interval."""
    labels = list(benches)
    diffs = [100 * benches[k]["diff"] for k in labels]
    err = [[100 * (benches[k]["diff"] - benches[k]["ci"][0]) for k in labels],
           [100 * (benches[k]["ci"][1] - benches[k]["diff"]) for k in labels]]
    fig, ax = plt.subplots(figsize=(max(3.5, 1.6 * len(labels)), 3.2))
    ax.bar(labels, diffs, yerr=err, capsize=4, color=["#55a868" if d >= 0 else "#c44e52" for d in diffs])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("B - A accuracy (points)")
    ax.set_title("difference (paired bootstrap 95% CI)")
    return fig


def _problem_rows(items: list) -> list:
    """Rows of fixed or broken problems; long answers cut (compare.json keeps them whole)."""
    cut = lambda a: clip(a, ANSWER_CHARS) if isinstance(a, str) else a  # noqa: E731 - a missing answer is None
    return [[r["id"], cut(r["gold"]), cut(r["answer_a"]), cut(r["answer_b"]), clip(r["question"], 120)] for r in items]


def _per_problem(settings: dict) -> str:
    n = settings["n"]
    return f"{n} sample{'s' if n != 1 else ''} a problem, {settings['shots']}-shot"


def compare_blocks(result: dict) -> list:
    """Every block of the comparison report."""
    a, b = result["a"], result["b"]
    benches = result["benchmarks"]
    blocks = [h(1, f"Comparison: {b['model']} (B) vs {a['model']} (A)"),
              p(f"A: {a['folder']} ({_per_problem(a['settings'])}). B: {b['folder']} ({_per_problem(b['settings'])}). "
                f"Solved means {result['solved_means']}; the interval is a paired bootstrap over the shared problems."),
              link("The comparison as data, questions and answers in full: ", "compare.json")]
    blocks += [p(f"Warning: {c['warning']}") for c in benches.values() if c["warning"]]
    if result["skipped_benchmarks"]:
        blocks.append(p(f"Not in both folders, not compared: {', '.join(result['skipped_benchmarks'])}"))
    blocks.append(table(
        ["benchmark", "shared", "A", "B", "B - A", "95% CI", "fixed", "broken"],
        [[k, c["shared"], _pct(c["accuracy_a"]), _pct(c["accuracy_b"]), f"{100 * c['diff']:+.1f} pts",
          f"{100 * c['ci'][0]:+.1f} to {100 * c['ci'][1]:+.1f}", len(c["fixed"]), len(c["broken"])]
         for k, c in benches.items()]))
    blocks.append(image("compare", diff_figure(benches)))
    if result.get("references", True):
        blocks += reference_blocks(result.get("specs", {k: k for k in benches}), b["settings"],
                                   (("A", a.get("model_path", "")), ("B", b.get("model_path", ""))), against="B")
    for key, c in benches.items():
        blocks.append(h(2, f"{key}: problems fixed and broken"))
        for kind in ("fixed", "broken"):
            items = c[kind]
            inner = [paged(["id", "gold", "A answer", "B answer", "question"], _problem_rows(items), "in compare.json")
                     if items else p("none")]
            blocks.append(fold(f"{key}: {kind} ({len(items)})", inner, open_=bool(items)))
    return blocks


def write_compare_report(out: Path, result: dict) -> Path:
    """Write compare.md (+ plots/) and compare.html into `out`; return the HTML path."""
    return write_pages(Path(out), "compare", compare_blocks(result), "Comparison")
