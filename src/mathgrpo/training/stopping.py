"""Stopping a training loop without losing or bending the run.

Ctrl-C asks the loop to stop at the next step boundary, where a checkpoint is exact; a second
Ctrl-C stops at once. Under torchrun the ranks agree at each boundary, so they stop together.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Optional

from .. import dist
from ..errors import Error
from ..progress import notice


class TrainingStopped(Error, RuntimeError):
    """Training stopped on purpose (NaN, out of memory) after saving what could be saved; the message says what to change."""


class StopRequest:
    """A context that turns the first Ctrl-C into a request the loop reads with `agreed()`."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.requested = False
        self._previous = None

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        notice(f"\n{self.label}: stopping after this step and saving (Ctrl-C again to stop at once, unsaved)")

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def agreed(self) -> bool:
        """True once any rank was asked to stop (a collective under torchrun: call it at every step boundary)."""
        return dist.all_sum(float(self.requested)) > 0
