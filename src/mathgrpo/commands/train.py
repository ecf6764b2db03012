"""`mathgrpo train` / `sft` / `grpo`: a run through `api.train`, then the few numbers a person wants; `--dry-run`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

from .. import api, dist


def train(recipe: Optional[str], overrides: list, resume: Optional[str], stages: tuple) -> int:
    """Train (or resume) and print the summary; 1 when training stopped on purpose (NaN, out of memory), 130 on Ctrl-C."""
    from ..training.stopping import TrainingStopped

    t0 = time.time()
    try:
        run = api.train(recipe, overrides=overrides, resume=resume, stages=stages)
    except TrainingStopped as err:
        print(f"mathgrpo: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if dist.world().main:
        print_summary(run, time.time() - t0 if resume else None)
    return 0


def print_summary(run: api.Run, resumed_seconds: Optional[float] = None) -> None:
    """Held-out accuracy before and after, where the summary is, and the evaluation to run next (on the run's
    eval.bench). The time is summary.json's, the total over every command of the run; a resumed command
    (`resumed_seconds`: its own wall time) shows its own beside it."""
    summary = run.summary
    if run.headline:
        print(run.headline)
    total = summary["wall_seconds"]
    took = f"{total:.0f} s" if resumed_seconds is None else f"resumed: {resumed_seconds:.0f} s this time, {total:.0f} s over the run"
    print(f"summary: {Path(summary['run_dir']) / 'summary.json'} ({took})")
    print(f"next: mathgrpo eval --model {summary['run_dir']} --bench {run.config.eval.bench}")


def dry_run(recipe: Optional[str], overrides: list, resume: Optional[str], stages: tuple) -> int:
    """Print what `train` would do (`api.check`); 2 when an input is missing."""
    plan = api.check(recipe, overrides=overrides, resume=resume, stages=stages)
    print(plan)
    return 0 if plan.ok else 2
