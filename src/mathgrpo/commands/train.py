"""`mathgrpo train` / `sft` / `grpo`: a run through `api.train`, then the few numbers a person wants; `--dry-run`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from .. import api, dist


def train(recipe: Optional[str], overrides: list, resume: Optional[str], stages: tuple) -> int:
    """Train (or resume) and print the summary; 1 when training stopped on purpose (NaN, out of memory), 130 on Ctrl-C."""
    from ..training.stopping import TrainingStopped

    try:
        run = api.train(recipe, overrides=overrides, resume=resume, stages=stages)
    except TrainingStopped as err:
        print(f"mathgrpo: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if dist.world().main:
        print_summary(run)
    return 0


def print_summary(run: api.Run) -> None:
    """Held-out accuracy before and after, where the summary is, and the evaluation to run next."""
    summary = run.summary
    if run.headline:
        print(run.headline)
    print(f"summary: {Path(summary['run_dir']) / 'summary.json'} ({summary['wall_seconds']:.0f} s)")
    print(f"next: mathgrpo eval --model {summary['run_dir']}")


def dry_run(recipe: Optional[str], overrides: list, resume: Optional[str], stages: tuple) -> int:
    """Print what `train` would do (`api.check`); 2 when an input is missing."""
    plan = api.check(recipe, overrides=overrides, resume=resume, stages=stages)
    print(plan)
    return 0 if plan.ok else 2
