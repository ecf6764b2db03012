"""Run folders: where a run's config, stages, metrics and summary live, and how a run is found again.

runs/<name>/
  config.yaml            the resolved config
  sft/model/             the warmed-up model (full model, or a PEFT adapter)
  sft/checkpoints/       warm-up checkpoints
  grpo/checkpoints/      GRPO checkpoints: ckpt-000050/model/ is the adapter at step 50; a checkpoint folder
                         without meta.json is unfinished and never read
  grpo/metrics.jsonl     per-step metrics (sft/metrics.jsonl likewise)
  grpo/samples.jsonl     a few completions every run.sample_every steps
  summary.json           accuracy before and after GRPO, steps, wall time
  export/                what `mathgrpo export RUN` writes by default
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .config import Config, config_yaml, load_config, write_atomic
from .diskio import writing
from .errors import Error
from .progress import notice


CHECKPOINT_PREFIX = "ckpt-"


class RunError(Error, ValueError):
    """A run folder cannot be made, or --model / --resume names no usable run, model or folder; says what to pass."""


def new_run_dir(cfg: Config, recipe: Optional[str]) -> Path:
    """A fresh folder for a run, claimed by writing its config.yaml: run.name, else recipe name plus the time.

    Claiming is atomic, so two runs started in the same second never share a folder: a default name
    that another run took gets a `-2`, `-3`... suffix; a run.name that is taken is refused.
    """
    root = Path(cfg.run.output_dir)
    if cfg.run.name:
        path = root / cfg.run.name
        if not _claim(path, config_yaml(cfg)):
            raise RunError(f"run folder {path} exists; pass --resume {path} to continue it, or another run.name")
        return path
    stem = f"{Path(recipe or 'run').stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 1000):
        path = root / (stem if n == 1 else f"{stem}-{n}")
        if _claim(path, config_yaml(cfg)):
            return path
    raise RunError(f"{root}: 999 run folders named {stem}-*; pass run.name")


def resumed_config(resume: str, overrides: Optional[list]) -> Config:
    """The saved config of the run folder `resume` with `overrides` (e.g. more steps) on top."""
    if not (Path(resume) / "config.yaml").exists():
        raise FileNotFoundError(f"--resume {resume}: no config.yaml there; is it a run folder made by mathgrpo train?")
    return load_config(str(Path(resume) / "config.yaml"), overrides)


def discard_if_unused(run_dir: Path) -> None:
    """Remove a new run folder that still holds only its config.yaml (the run failed before any stage
    wrote anything), so that the same command can be run again as it was."""
    if [p.name for p in run_dir.iterdir()] == ["config.yaml"]:
        (run_dir / "config.yaml").unlink()
        run_dir.rmdir()


def _claim(path: Path, config_text: str) -> bool:
    """Create `path` (or take it while empty) with `config.yaml` in one atomic step; False if it is in use.

    The config is written to a private temporary file and hard-linked into place: a link fails when
    the name exists, so of two runs racing for one folder exactly one gets it, and never half a file.
    """
    path.mkdir(parents=True, exist_ok=True)
    if any(not p.name.startswith(".config.yaml.") for p in path.iterdir()):
        return False
    tmp = path / f".config.yaml.{os.getpid()}.{threading.get_ident()}.tmp"
    with writing(path / "config.yaml", tmp):
        tmp.write_text(config_text)
    try:
        os.link(tmp, path / "config.yaml")
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def finished_checkpoints(folder: Path) -> list:
    """The finished checkpoints under a stage's `checkpoints/` folder, oldest first."""
    folder = Path(folder)
    if not folder.exists():
        return []
    found = [p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if (p / "meta.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def latest_checkpoint(folder: Path) -> Optional[Path]:
    """The newest finished checkpoint under `folder`, or None."""
    found = finished_checkpoints(folder)
    return found[-1] if found else None


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename): never a half-written file after a crash."""
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> dict:
    """A JSON file, or {} when it does not exist."""
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}


def is_run_dir(path: Path) -> bool:
    """True for a folder laid out by `mathgrpo train`."""
    return (Path(path) / "config.yaml").exists() and ((Path(path) / "sft").exists() or (Path(path) / "grpo").exists())


def in_run_folder(path: Path) -> bool:
    """Whether `path` is a model a training run wrote into its own folder (`<run>/sft/model`)."""
    path = Path(path)
    return path.is_dir() and path.name == "model" and path.parent.name == "sft" and is_run_dir(path.parent.parent)


def export_dir(ref: str, model: "ModelRef") -> Path:
    """Where `mathgrpo export` writes by default: `<run>/export` for a run folder, else `<model label>-export`
    (`r1-ckpt-000050-export` for a checkpoint of run r1, `<folder name>-export` for a model folder)."""
    return Path(ref) / "export" if is_run_dir(Path(ref)) else Path(f"{model.label}-export")


@dataclass(frozen=True)
class ModelRef:
    """What `--model` resolved to: the name `load_base` gets, a short label, and the run folder if any."""

    path: str  # hub id, model folder or adapter folder
    label: str  # for folder names and reports
    run_dir: Optional[Path] = None  # the training run it came from (training curves in the report)


STAGES = ("grpo", "sft")  # a run's stages, the later first: a run folder stands for its GRPO model, else its warm-up's
MODEL_FILES = ("config.json", "adapter_config.json")  # what a model folder or a PEFT adapter folder holds


def resolve_model(ref: str) -> ModelRef:
    """Resolve `--model`: a folder of a run's layout to the model it stands for, a model folder, hub id or `tiny`
    as given; a folder that holds no model is refused in one line that names it and says what to pass.

    Run layout: `<run>/grpo/checkpoints/ckpt-NNNNNN/model/` (adapter or full model), `<run>/sft/model/`,
    `<run>/grpo/metrics.jsonl`. A run folder stands for its latest GRPO checkpoint, else its warm-up model; a stage
    folder for its `model/`, else its latest checkpoint; a `checkpoints/` folder for its latest checkpoint; a
    checkpoint folder for its `model/`.
    """
    path = Path(ref).expanduser()
    if ref == "tiny" or not path.exists():
        if ref.startswith(("/", ".", "~")) or ref.count("/") > 1:
            raise RunError(f"--model {ref}: no such folder (a hub id looks like owner/name)")
        return ModelRef(ref, ref.rstrip("/").split("/")[-1])
    if not path.is_dir():
        raise RunError(f"--model {ref} is a file; pass a model, adapter or run folder, or a hub id")
    model = _model_in(path)
    if model is None:
        raise RunError(_no_model(ref, path))
    place = model_place(model)
    if place is None:
        return ModelRef(str(model), _folder_label(model))
    run_dir = place.run_dir  # a model named directly is a run's when its run folder is one (it has a config.yaml)
    return ModelRef(str(model), place.label, run_dir if model != path or is_run_dir(run_dir) else None)


def _model_in(path: Path) -> Optional[Path]:
    """The model folder `path` stands for: itself when it holds a model or is where a run keeps one, else what it
    stands for in a run's layout (see `resolve_model`); None when there is none."""
    if any((path / name).exists() for name in MODEL_FILES) or model_place(path) is not None:
        return path
    if (path / "model").is_dir():  # a checkpoint folder, or a run's sft/
        return path / "model"
    ckpt = latest_checkpoint(path if path.name == "checkpoints" else path / "checkpoints")
    if ckpt is not None:
        return _model_in(ckpt)
    stages = (_model_in(path / stage) for stage in STAGES if (path / stage).is_dir())
    return next((model for model in stages if model is not None), None)


@dataclass(frozen=True)
class Place:
    """Where a run keeps a model folder: the run folder, the stage that made it, the checkpoint's step (None: the
    stage's final model) and the model's label."""

    run_dir: Path
    stage: str
    step: Optional[int]
    label: str


def model_place(model: Path) -> Optional[Place]:
    """The Place of a model folder where a run keeps one (`<run>/sft/model`, `<run>/<stage>/checkpoints/
    ckpt-NNNNNN/model`), else None. The label: the run's name, then `sft` for a warm-up model, then the
    checkpoint's name (`try1-ckpt-000200`, `try1-sft`, `try1-sft-ckpt-000030`)."""
    if model.name != "model":
        return None
    spot = model.parent
    ckpt = spot if spot.name.startswith(CHECKPOINT_PREFIX) and spot.parent.name == "checkpoints" else None
    stage = ckpt.parent.parent if ckpt else model.parent
    if stage.name not in STAGES or (ckpt is None and stage.name != "sft"):
        return None
    run_dir = stage.parent
    parts = [run_dir.resolve().name] + (["sft"] if stage.name == "sft" else []) + ([ckpt.name] if ckpt else [])
    step = int(ckpt.name[len(CHECKPOINT_PREFIX):]) if ckpt else None
    return Place(run_dir, stage.name, step, "-".join(parts))


def _no_model(ref: str, path: Path) -> str:
    """The one-line refusal of a folder that holds no model: what it lacks, and what to pass instead."""
    if any((path / stage).is_dir() for stage in STAGES) or path.name in (*STAGES, "checkpoints"):
        return f"--model {ref}: a run folder without checkpoints/ckpt-*/ or sft/model/; train first or pass a model"
    runs = sorted(p.name for p in path.iterdir() if is_run_dir(p))
    lacks = f"--model {ref}: no model in this folder (no {' or '.join(MODEL_FILES)})"
    if runs:
        shown = ", ".join(runs[:3]) + (", ..." if len(runs) > 3 else "")
        return f"{lacks}, but run folders ({shown}): pass one, e.g. --model {path / runs[-1]}"
    return (f"{lacks}; pass a model or adapter folder, a run folder, a checkpoint folder "
            f"(<run>/grpo/checkpoints/{CHECKPOINT_PREFIX}NNNNNN) or a hub id")


def _folder_label(path: Path) -> str:
    """A folder's label: its name, or for a `.../<run>/sft/model` style path the two names that tell it apart."""
    if path.resolve().name != "model":
        return path.resolve().name
    parts = [p for p in path.resolve().parts if p not in ("model", "checkpoints", "grpo")]
    return "-".join(parts[-2:])


def run_recipe(model_ref: Optional[str], changed_by: str = "--recipe or key=value overrides") -> Optional[str]:
    """The config.yaml of the training run `model_ref` lies in (run, stage or checkpoint folder), else None.

    A trained model is evaluated the way it was trained: the run's format, template and rollout
    settings become the defaults (flags and overrides still win). `changed_by`: what the calling
    command accepts to change them, as the printed line says.
    """
    if not model_ref or not Path(model_ref).is_dir():
        return None
    path = Path(model_ref).resolve()
    for folder in [path, *path.parents][:6]:
        if is_run_dir(folder):
            notice(f"settings: {folder / 'config.yaml'} (the run's own; {changed_by} change them)")
            return str(folder / "config.yaml")
    return None
