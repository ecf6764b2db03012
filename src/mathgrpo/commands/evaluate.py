"""`mathgrpo eval` and `mathgrpo eval --compare A B`: the results table (or the comparison's), published figures
beside it, and where the report is."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.table import Table

from .. import api, dist
from ..config import load_config
from ..evaluation.references import matching


def evaluate(model: Optional[str], bench: Optional[str], recipe: Optional[str], overrides: list,
             output: Optional[str], limit: Optional[int], n: Optional[int], shots: Optional[int]) -> int:
    """Benchmark a model (`api.evaluate`) and print its results table, published figures beside it and where the
    files are."""
    results = api.evaluate(model, bench, recipe=recipe, limit=limit, n=n, shots=shots, output=output, overrides=overrides)
    if not dist.world().main:
        return 0
    metrics = results.metrics
    print_results(metrics)
    if metrics["references"]:
        print_references({k: m.get("spec", k) for k, m in metrics["benchmarks"].items()}, metrics["settings"],
                         (("", metrics["model_path"]),))
    print(f"results: {results.path}\nreport:  {results.report}")
    return 0


def compare(a: str, b: str, output: Optional[str], recipe: Optional[str], overrides: list) -> int:
    """Compare two results folders (`api.compare`) and print the table; eval.references=false hides published figures."""
    show = load_config(recipe, overrides).eval.references
    comparison = api.compare(a, b, output, references=show)
    result = comparison.result
    print_comparison(result)
    if show:
        print_references(result["specs"], result["b"]["settings"],
                         (("A", result["a"]["model_path"]), ("B", result["b"]["model_path"])))
    print(f"report: {comparison.report}")
    return 0


def table_console() -> Console:
    """A console for result tables: the terminal's, or 120 columns wide in logs and pipes (no squeezed columns)."""
    console = Console()
    return console if console.is_terminal else Console(width=120)


def print_results(metrics: dict) -> None:
    """The short results table of an evaluation."""
    table = Table(title=f"{metrics['model']}")
    table.add_column("benchmark", no_wrap=True, min_width=max(len(k) for k in metrics["benchmarks"]))
    for col in ("problems", "accuracy", "95% CI", "format", "mean len"):
        table.add_column(col, justify="right", no_wrap=True)
    for key, m in metrics["benchmarks"].items():
        table.add_row(key, str(m["problems"]), f"{m['accuracy']:.1%}", f"{m['ci'][0]:.1%}-{m['ci'][1]:.1%}",
                      f"{m['format_adherence']:.1%}", f"{m['length']['mean']:.0f}")
    table_console().print(table)


def print_comparison(result: dict) -> None:
    """The short comparison table, warnings first."""
    console = table_console()
    for bench in result["benchmarks"].values():
        if bench["warning"]:
            console.print(f"[yellow]warning:[/yellow] {bench['warning']}")
    table = Table(title=f"B {result['b']['model']} vs A {result['a']['model']}")
    width = max(len(k) for k in result["benchmarks"])
    table.add_column("benchmark", no_wrap=True, min_width=width)
    for col in ("shared", "A", "B", "B - A", "95% CI (pts)", "fixed", "broken"):
        table.add_column(col, justify="right", no_wrap=True)
    for key, c in result["benchmarks"].items():
        table.add_row(key, str(c["shared"]), f"{c['accuracy_a']:.1%}", f"{c['accuracy_b']:.1%}", f"{100 * c['diff']:+.1f}",
                      f"{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}", str(len(c["fixed"])), str(len(c["broken"])))
    console.print(table)


def print_references(specs: dict, settings: dict, model_paths: tuple) -> None:
    """Published figures for the benchmarks `specs` ({key: spec}) as a table titled as not measured here."""
    found = {key: rows for key, spec in specs.items() if (rows := matching(spec, settings, model_paths))}
    if not found:
        return
    table = Table(title="Published figures (not measured here)")
    for col in ("benchmark", "model", "published", "setting"):
        table.add_column(col, justify="right" if col == "published" else "left")
    for key, rows in found.items():
        for r in rows:
            table.add_row(key, f"{r['model']} ({r['whose']})" if r["whose"] else r["model"], f"{r['value']:g}%",
                          r["setting"])
    table_console().print(table)
