"""`mathgrpo train` / `sft` / `grpo`: a run folder, the data, the warm-up, then GRPO, then a summary.

Stages hand over through the disk (`sft/model`), so an uninterrupted run and a resumed one take
exactly the same path.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from .. import dist
from ..config import Config, load_config, save_config
from ..data import DataError, load_configured
from ..model.loading import set_threads
from ..preflight import device_choices, require, training_checks
from ..runs import new_run_dir, read_json, write_json


def _load(cfg: Config, spec: str, split: str, limit: Optional[int], seed: int) -> list:
    """Problems of one split of a source, with its bad-row summary printed."""
    report = load_configured(cfg.data, spec, split, limit, seed)
    print(f"data: {report.summary()} [{split}]")
    return report.problems


def load_problems(cfg: Config) -> tuple:
    """(train, dev, test): held-out sets come from the `test` split (dev from `dev` where one exists)."""
    d = cfg.data
    heldout_spec = d.heldout_source or d.source
    test = _load(cfg, heldout_spec, "test", d.heldout_size, d.seed)
    try:
        dev = _load(cfg, heldout_spec, "dev", d.heldout_size, d.seed)
    except DataError:
        dev = test
    held = {p.question for p in test} | {p.question for p in dev}
    train = [p for p in _load(cfg, d.source, d.split, d.limit, d.seed) if p.question not in held]
    return train, dev, test


def _sft_problems(cfg: Config, train: list) -> list:
    """Warm-up problems: sft.source when set, else the training problems."""
    if not cfg.sft.source:
        return train
    return _load(cfg, cfg.sft.source, cfg.data.split, cfg.data.limit, cfg.data.seed)


def resumed_config(resume: str, overrides: Optional[list]) -> Config:
    """The saved config of the run folder `resume` with `overrides` (e.g. more steps) on top."""
    if not (Path(resume) / "config.yaml").exists():
        raise FileNotFoundError(f"--resume {resume}: no config.yaml there; is it a run folder made by mathgrpo train?")
    return load_config(str(Path(resume) / "config.yaml"), overrides)


def _start(cfg: Config, recipe: Optional[str], resume: Optional[str], overrides: Optional[list], stages: tuple) -> tuple:
    """(config, run folder): a new folder, or the saved config (plus overrides, e.g. more steps) of a resumed run.

    Before anything is written, the model, data sources and device are checked (preflight).
    """
    if resume:
        run_dir = Path(resume)
        cfg = resumed_config(resume, overrides)
        require(training_checks(cfg, stages))
        dist.barrier()  # every rank has read the file before rank 0 rewrites it
        if overrides and dist.world().main:
            save_config(cfg, run_dir / "config.yaml")
        return cfg, run_dir
    require(training_checks(cfg, stages))
    if dist.world().main:
        run_dir = new_run_dir(cfg, recipe)  # holds config.yaml already
    run_dir = Path(dist.gather(str(run_dir) if dist.world().main else None)[0])
    return cfg, run_dir


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


def main(cfg: Config, recipe: Optional[str] = None, resume: Optional[str] = None, stages: tuple = ("sft", "grpo"),
         overrides: Optional[list] = None) -> dict:
    """Run the stages of a recipe in a run folder and write `summary.json`; returns the summary.

    With `resume`, the run's saved config is used, with `overrides` (say `grpo.steps=400`) on top.
    """
    dist.init()
    cfg, run_dir = _start(cfg, recipe, resume, overrides, stages)
    try:
        return _run(cfg, run_dir, stages, resumed=bool(resume))
    except BaseException:
        if not resume and dist.world().main:
            discard_if_unused(run_dir)
        raise


def discard_if_unused(run_dir: Path) -> None:
    """Remove a new run folder that still holds only its config.yaml (the run failed before any stage
    wrote anything), so that the same command can be run again as it was."""
    if [p.name for p in run_dir.iterdir()] == ["config.yaml"]:
        (run_dir / "config.yaml").unlink()
        run_dir.rmdir()


def _run(cfg: Config, run_dir: Path, stages: tuple, resumed: bool = False) -> dict:
    """The stages in `run_dir`, then the summary; `resumed`: this command continues an earlier one's run."""
    set_threads(cfg.run.threads)
    import torch

    torch.manual_seed(cfg.run.seed)
    print(f"run: {run_dir}")
    if dist.world().main:
        print(device_choices(cfg, brief=True))
    t0 = time.time()
    summary = read_json(run_dir / "summary.json")
    train, dev, test = load_problems(cfg)
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
        _print_summary(summary, time.time() - t0, resumed, cfg.eval.bench)
    return summary


def _print_summary(summary: dict, seconds: float, resumed: bool, bench: str) -> None:
    """The few numbers a person wants at the end of a run: accuracy, this command's own wall time (summary.json
    keeps the total over every command of the run) and the evaluation to run next, on the recipe's eval.bench."""
    before, after = summary.get("accuracy_before_grpo"), summary.get("accuracy_after_grpo")
    if before is not None and after is not None:
        print(f"held-out accuracy: {before:.1%} before GRPO -> {after:.1%} after ({(after - before) * 100:+.1f} points, {summary.get('steps')} steps)")
    took = f"resumed: {seconds:.0f} s this time, {summary['wall_seconds']:.0f} s over the run" if resumed else f"{seconds:.0f} s"
    print(f"summary: {Path(summary['run_dir']) / 'summary.json'} ({took})")
    print(f"next: mathgrpo eval --model {summary['run_dir']} --bench {bench}")
