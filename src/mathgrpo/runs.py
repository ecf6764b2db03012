"""Run folders: where a run's config, stages, metrics and summary live, and how a run is found again.

runs/<name>/
  config.yaml            the resolved config
  sft/model/             the warmed-up model (full model, or a PEFT adapter)
  sft/checkpoints/       warm-up checkpoints
  grpo/checkpoints/      GRPO checkpoints: ckpt-000050/model/ is the adapter at step 50
  grpo/metrics.jsonl     per-step metrics (sft/metrics.jsonl likewise)
  grpo/samples.jsonl     a few completions every run.sample_every steps
  summary.json           accuracy before and after GRPO, steps, wall time
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

from .config import Config


def new_run_dir(cfg: Config, recipe: Optional[str]) -> Path:
    """A fresh folder for a run: run.name, else recipe name plus the time."""
    name = cfg.run.name or f"{Path(recipe or 'run').stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(cfg.run.output_dir) / name
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"run folder {path} exists; pass --resume {path} to continue it, or another run.name")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temporary file, then rename): never a half-written file after a crash."""
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    """A JSON file, or {} when it does not exist."""
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}


def model_dir(run: Path) -> Optional[Path]:
    """The newest model a run folder holds: latest GRPO checkpoint, else the warm-up's model."""
    from .checkpoint import latest

    ckpt = latest(Path(run) / "grpo" / "checkpoints")
    if ckpt is not None:
        return ckpt / "model"
    sft = Path(run) / "sft" / "model"
    return sft if sft.exists() else None


def is_run_dir(path: Path) -> bool:
    """True for a folder laid out by `mathgrpo train`."""
    return (Path(path) / "config.yaml").exists() and ((Path(path) / "sft").exists() or (Path(path) / "grpo").exists())


def run_config(ref: str) -> Optional[Config]:
    """The saved config of a run folder (or of the run a checkpoint model belongs to), else None."""
    from .config import load_config

    path = Path(ref).resolve()
    for folder in [path, *path.parents][:5]:
        if is_run_dir(folder):
            return load_config(str(folder / "config.yaml"))
    return None
