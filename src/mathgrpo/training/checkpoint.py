"""Checkpoints written atomically (temporary folder, then rename) and read back for exact resume.

A checkpoint folder `ckpt-000050/` holds `model/` (the PEFT adapter, or the whole model without
LoRA, with its tokenizer), `state.pt` (optimizer, scheduler, RNG states, data position, exact
trainable tensors) and `meta.json` (step and when). A folder without `meta.json` is unfinished and
is never resumed from (`runs.finished_checkpoints` lists the others: the run folder's layout).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from .. import dist
from ..diskio import writing
from ..model.loading import load_trainable_state, save_trainable, trainable_state
from ..runs import CHECKPOINT_PREFIX as PREFIX, finished_checkpoints


def rng_state() -> dict:
    """Every RNG a run draws from: Python, NumPy, torch CPU and CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def optimizer_state(model: Any, optimizer: Any) -> dict:
    """The optimizer's state keyed by parameter name, gathered whole (a collective under torchrun).

    Keyed by name rather than position, and unsharded, so a checkpoint loads into a run with another
    number of ranks or another parallel mode.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=dist.world().active)
    return get_optimizer_state_dict(model, optimizer, options=options)


def save(folder: Path, step: int, model: Any, tokenizer: Any, optimizer: Any, scheduler: Any, extra: dict, keep_last: int) -> Path:
    """Write checkpoint `step` under `folder` atomically and prune all but the last `keep_last`.

    Under torchrun every rank calls this (gathering sharded state is collective); rank 0 writes.
    A finished checkpoint of the same step is kept as it is: the state at one step boundary is one
    state, and an interrupt right after a periodic save should not write it twice.
    """
    folder = Path(folder)
    final = folder / f"{PREFIX}{step:06d}"
    if dist.gather((final / "meta.json").exists())[0]:  # rank 0 holds the files: its answer counts
        return final
    optim = optimizer_state(model, optimizer)
    full = dist.full_state_dict(model) if dist.is_sharded(model) else None
    if dist.world().main:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        trainable = {n: full[n] for n in names} if full is not None else trainable_state(model)
        _write(folder, final, step, model, tokenizer, full, {
            "step": step, "trainable": trainable, "optimizer": optim, "scheduler": scheduler.state_dict(),
            "rng": rng_state(), "extra": extra,
        })
        prune(folder, keep_last)
    dist.barrier()
    return final


def _write(folder: Path, final: Path, step: int, model: Any, tokenizer: Any, full: Optional[dict], state: dict) -> None:
    """The checkpoint's files in a temporary folder, then one rename into place (full: a sharded model's state)."""
    tmp = folder / f".tmp-{PREFIX}{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(final, tmp):  # a failed write (a full disk) leaves no half checkpoint behind
        tmp.mkdir(parents=True)
        save_trainable(model, tokenizer, tmp / "model", full)
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, "time": time.time()}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)


def prune(folder: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints and any leftover temporary folders."""
    for old in finished_checkpoints(folder)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in Path(folder).glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(tmp, ignore_errors=True)


def load(path: Path, model: Any, optimizer: Any, scheduler: Any) -> dict:
    """Restore model tensors, optimizer, scheduler and RNGs from a checkpoint; returns its `extra`."""
    state = torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
    if dist.is_sharded(model):
        set_model_state_dict(model, state["trainable"], options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        load_trainable_state(model, state["trainable"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return {"step": state["step"], **state["extra"]}
