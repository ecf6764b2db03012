"""The stages of a run in its folder: the data, the warm-up, then GRPO, then `summary.json`.

The folder exists already, holding the run's config.yaml, and its inputs were checked (the entry point
does both: `api.train`). Stages hand over through the disk (`sft/model`), so an uninterrupted run and a
resumed one take exactly the same path.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from .. import dist
from ..config import Config, DataConfig
from ..data import DataError, load_configured
from ..model.loading import set_threads
from ..progress import notice
from ..runs import read_json, write_json


def _load(data: DataConfig, spec: str, split: str, limit: Optional[int], seed: int) -> list:
    """Problems of one split of a source, with its bad-row summary said."""
    report = load_configured(data, spec, split, limit, seed)
    notice(f"data: {report.summary()} [{split}]")
    return report.problems


def load_problems(d: DataConfig) -> tuple:
    """(train, dev, test): held-out sets come from the `test` split (dev from `dev` where one exists)."""
    heldout_spec = d.heldout_source or d.source
    test = _load(d, heldout_spec, "test", d.heldout_size, d.seed)
    try:
        dev = _load(d, heldout_spec, "dev", d.heldout_size, d.seed)
    except DataError:
        dev = test
    held = {p.question for p in test} | {p.question for p in dev}
    problems = _load(d, d.source, d.split, d.limit, d.seed)
    train = [p for p in problems if p.question not in held]
    if not train:
        raise DataError(_nothing_to_train(d, len(problems), len(held)))
    if len(train) < len(problems):
        notice(f"data: {len(train)} problems to train on ({len(problems) - len(train)} of the {len(problems)} are "
               "held out)")
    return train, dev, test


def _nothing_to_train(d: DataConfig, loaded: int, held: int) -> str:
    """What to change when the held-out problems are every problem the training source gives."""
    if not loaded:
        return f"data.source={d.source} gives no problems [{d.split}]; check the source, its split and data.limit"
    if d.heldout_source:
        fix = "set data.heldout_source to a source without data.source's questions"
    elif loaded > 1:
        fix = f"set data.heldout_size below {loaded} (e.g. {max(1, loaded // 5)}) or data.heldout_source to another source"
    else:
        fix = "add problems to it or set data.heldout_source to another source"
    return (f"no problems left to train on: data.source={d.source} gives {loaded} [{d.split}], and all of them are "
            f"among the {held} held out (data.heldout_size={d.heldout_size}, from "
            f"{d.heldout_source or 'the same source'}); {fix}")


def _sft_problems(cfg: Config, train: list) -> list:
    """Warm-up problems: sft.source when set, else the training problems."""
    if not cfg.sft.source:
        return train
    return _load(cfg.data, cfg.sft.source, cfg.data.split, cfg.data.limit, cfg.data.seed)


def run_sft(cfg: Config, run_dir: Path, train: list, dev: list) -> dict:
    """The warm-up stage, skipped when its model is already there (a resumed run)."""
    from .sft import SFTRun

    if (run_dir / "sft" / "model").exists():
        return read_json(run_dir / "summary.json").get("sft", {})
    stage = SFTRun(cfg, run_dir, _sft_problems(cfg, train), dev)
    stage.resume()
    return stage.run()


def run_grpo(cfg: Config, run_dir: Path, train: list, test: list) -> dict:
    """The GRPO stage, starting from the warm-up's model when there is one."""
    from .grpo import GRPORun

    sft_model = run_dir / "sft" / "model"
    stage = GRPORun(cfg, run_dir, train, test, sft_model if sft_model.exists() else None)
    stage.resume()
    return stage.run()


def run_stages(cfg: Config, run_dir: Path, stages: tuple = ("sft", "grpo")) -> dict:
    """The `stages` of `cfg` that are enabled, in `run_dir`, then `summary.json` (rank 0 writes); returns the summary."""
    set_threads(cfg.run.threads)
    import torch

    torch.manual_seed(cfg.run.seed)
    t0 = time.time()
    summary = read_json(run_dir / "summary.json")
    train, dev, test = load_problems(cfg.data)
    if "sft" in stages and cfg.sft.enabled:
        summary["sft"] = run_sft(cfg, run_dir, train, dev)
        if dist.world().main:
            write_json(run_dir / "summary.json", summary)
    if "grpo" in stages and cfg.grpo.enabled:
        summary.update(run_grpo(cfg, run_dir, train, test))
    summary["wall_seconds"] = summary.get("wall_seconds", 0.0) + time.time() - t0
    summary["run_dir"] = str(run_dir)
    summary["ranks"] = dist.world().size
    if dist.world().main:
        write_json(run_dir / "summary.json", summary)
    return summary
