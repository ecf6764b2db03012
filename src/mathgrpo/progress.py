"""How the library tells a person what is happening: one-line notices and progress bars, in a terminal and in
Jupyter alike.

Library code never prints. A line worth reading (a fallback taken, a run resumed, a warning) goes through
`notice`; long work draws a bar with `StepProgress` (steps of a stage) or `task_progress` (samples of a
benchmark). By default a notice is printed by the first process only, so a run under torchrun says each thing
once. Result tables and hints are not notices: the command layer prints those.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Optional

from rich import get_console
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def notice(text: str) -> None:
    """Tell the person running the tool `text` (one line, or a few), from the first rank only."""
    if _first_rank():
        print(text, flush=True)


def _first_rank() -> bool:
    from .dist import world  # here, not at the top: a command that never joins a process group needs no torch

    return world().main


class StepProgress:
    """A bar over `total` steps starting at `done`, with a free-text status line; silent when not `enabled`."""

    def __init__(self, label: str, total: int, done: int = 0, enabled: bool = True) -> None:
        self._progress = None
        if not enabled:
            return
        self._progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
            transient=False, console=bar_console(),
        )
        self._progress.start()
        self._task = self._progress.add_task(label, total=total, completed=done, status="")

    def update(self, done: int, status: str = "") -> None:
        """Move the bar to `done` steps and show `status`."""
        if self._progress is not None:
            self._progress.update(self._task, completed=done, status=status)

    def finish(self, done: int, status: str = "") -> None:
        """End the bar at `done` steps as complete (a stage that stopped early on purpose: no eta left)."""
        if self._progress is not None:
            self._progress.update(self._task, total=done, completed=done, status=status)

    def close(self) -> None:
        """Stop drawing."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def task_progress(enabled: bool) -> Any:
    """Bars for several tasks counted in items (a benchmark's samples: done / total, elapsed, remaining); a context
    manager whose `add_task(name, total=)` and `advance(task, n)` move them; silent when not `enabled`."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), disable=not enabled, console=bar_console(),
    )


def bar_console() -> Optional[Console]:
    """Where bars draw: rich's shared console (None), except in Jupyter without ipywidgets (rich's only way to redraw
    a bar there), where a plain one prints each bar once as it ends instead of a warning at every redraw and no bar."""
    if get_console().is_jupyter and importlib.util.find_spec("ipywidgets") is None:
        return Console(force_jupyter=False)
    return None
