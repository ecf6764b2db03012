"""Metrics sinks: JSONL always (one object per line, flushed), TensorBoard and W&B when installed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .diskio import writing
from .progress import notice


def read_jsonl(path: Path) -> list:
    """All complete JSON lines of a file (a torn last line from a crash is skipped)."""
    rows = []
    if not Path(path).exists():
        return rows
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_after(path: Path, step: int) -> None:
    """Drop rows logged after `step` (a resumed run logs those steps again)."""
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(path)


def _clean(value: Any) -> Any:
    """JSON-safe value: NaN and inf become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Writes one dict of scalars per step to every configured sink."""

    def __init__(self, folder: Path, sinks: list, run_name: str = "") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "metrics.jsonl"
        self._file = open(self.path, "a")
        self._tb = self._wandb = None
        if "tensorboard" in sinks:
            self._tb = self._open_tensorboard()
        if "wandb" in sinks:
            self._wandb = self._open_wandb(run_name)

    def _open_tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            notice("metrics: tensorboard is not installed (pip install 'mathgrpo[tensorboard]'); logging to JSONL only")
            return None
        return SummaryWriter(str(self.folder / "tb"))

    def _open_wandb(self, run_name: str) -> Any:
        try:
            import wandb
        except ImportError:
            notice("metrics: wandb is not installed (pip install 'mathgrpo[wandb]'); logging to JSONL only")
            return None
        return wandb.init(project="mathgrpo", name=run_name or None, reinit=True)

    def log(self, step: int, row: dict) -> None:
        """Append `row` (scalars) for `step` to every sink."""
        row = {"step": step, **{k: _clean(v) for k, v in row.items()}}
        with writing(self.path):
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        """Flush and close every sink."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
