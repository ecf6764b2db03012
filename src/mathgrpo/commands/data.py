"""`mathgrpo data show SOURCE`: a few problems as the model will see them, and the load counts."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..data import DataError, LoadReport, load_source
from ..data.formats import get_format
from ..data.solutions import sft_text

MAX_BAD_ROWS_SHOWN = 10


def _problem_panel(problem, fmt) -> Panel:
    """One problem: question, gold answer and the warm-up text (when it has a worked solution)."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("question", Text(problem.question))
    grid.add_row("answer", Text(problem.answer))
    warm_up = sft_text(problem, fmt)
    grid.add_row(f"warm-up ({fmt.name})", Text(warm_up) if warm_up else Text("(no worked solution)", style="dim"))
    return Panel(grid, title=Text(problem.id), title_align="left")


def _summary(report: LoadReport) -> Table:
    """Counts: problems loaded, how many carry a worked solution, bad rows skipped."""
    table = Table(title=f"{report.source}", show_header=False)
    table.add_row("problems loaded", str(len(report.problems)))
    table.add_row("with a worked solution", str(sum(1 for p in report.problems if p.solution)))
    table.add_row("bad rows skipped", str(len(report.bad_rows)))
    return table


def _bad_rows(report: LoadReport) -> Table:
    """The first bad rows: where and why."""
    table = Table("where", "why", title="bad rows")
    for bad in report.bad_rows[:MAX_BAD_ROWS_SHOWN]:
        table.add_row(Text(bad.where), Text(bad.reason))
    if len(report.bad_rows) > MAX_BAD_ROWS_SHOWN:
        table.caption = f"... and {len(report.bad_rows) - MAX_BAD_ROWS_SHOWN} more"
    return table


def show(spec: str, n: int = 3, fmt_preset: str = "reasoning", console: Optional[Console] = None,
         **load_kwargs) -> int:
    """Print the first `n` problems of `spec` and the load report; exit code 0, or 2 on a DataError."""
    console = console or Console()
    try:
        fmt = get_format(fmt_preset)
        report = load_source(spec, **load_kwargs)
    except (DataError, ValueError) as err:  # get_format raises ValueError for an unknown preset
        Console(stderr=True).print(Text(f"error: {err}", style="red"))
        return 2
    for problem in report.problems[:n]:
        console.print(_problem_panel(problem, fmt))
    console.print(_summary(report))
    if report.bad_rows:
        console.print(_bad_rows(report))
    return 0
