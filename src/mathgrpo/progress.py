"""Progress bars with ETA for long work (rich); silent when disabled or not on a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StepProgress:
    """A bar over `total` steps starting at `done`, with a free-text status line."""

    def __init__(self, label: str, total: int, done: int = 0, enabled: bool = True) -> None:
        self._progress = None
        if not enabled:
            return
        self._progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
            transient=False,
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


def table_console() -> Console:
    """A console for result tables: the terminal's, or 120 columns wide in logs and pipes (no squeezed columns)."""
    console = Console()
    return console if console.is_terminal else Console(width=120)
