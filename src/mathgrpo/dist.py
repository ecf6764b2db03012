"""Data parallelism through torchrun: which rank this is, its share of the work, and the collectives.

`torchrun --nproc-per-node N -m mathgrpo train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; without
them everything here is a no-op for one process. NCCL on GPU, gloo on CPU. Each rank generates
and rewards its own prompts (a group never spans ranks); gradients of the trainable weights are
summed across ranks after each backward pass (the loss is already normalised by global counts),
so every rank takes the same optimizer step and holds the same weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class World:
    """This process's place among the ranks."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


_WORLD = World()


def init() -> World:
    """Join the process group torchrun describes (once); one process without torchrun."""
    global _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 or torch_dist.is_initialized():
        return _WORLD
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # never NVLink multicast on shared hosts
    torch_dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    _WORLD = World(torch_dist.get_rank(), torch_dist.get_world_size(), local)
    return _WORLD


def world() -> World:
    """The current World (one process until `init` joined a group)."""
    return _WORLD


def share(items: list) -> tuple:
    """(offset, this rank's contiguous slice of items); the length must divide by the world size."""
    w = world()
    if len(items) % w.size:
        raise ValueError(f"{len(items)} items do not split over {w.size} ranks; make it a multiple of the rank count")
    k = len(items) // w.size
    return w.rank * k, items[w.rank * k : (w.rank + 1) * k]


def all_sum(value: float) -> float:
    """Sum of a number over ranks."""
    if not world().active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    torch_dist.all_reduce(t)
    return float(t.item())


def gather(obj: Any) -> list:
    """Every rank's object, in rank order, on every rank."""
    if not world().active:
        return [obj]
    out: list = [None] * world().size
    torch_dist.all_gather_object(out, obj)
    return out


def gather_concat(items: list) -> list:
    """Lists from every rank concatenated in rank order."""
    return [x for part in gather(items) for x in part]


def sum_gradients(params: list) -> None:
    """All-reduce (sum) the gradients of `params` across ranks, flattened into one buffer."""
    if not world().active:
        return
    for p in params:
        if p.grad is None:  # a rank whose groups were all dropped still takes part
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch_dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if world().active:
        torch_dist.barrier()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def shutdown() -> None:
    """Leave the process group."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
