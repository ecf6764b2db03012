"""Data parallelism through torchrun: which rank this is, its share of the work, and the collectives.

`torchrun --nproc-per-node N -m mathgrpo train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; without
them everything here is a no-op for one process. NCCL on GPU, gloo on CPU. Each rank generates
and rewards its own prompts (a group never spans ranks); gradients of the trainable weights are
summed across ranks after each backward pass (the loss is already normalised by global counts),
so every rank takes the same optimizer step and holds the same weights. With `run.parallel=fsdp`
(FSDP2) each decoder layer's weights, gradients and optimizer state are sharded across the ranks
instead of replicated, and gradients are reduce-scattered as sums.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as torch_dist
from torch.distributed.tensor import DTensor


@dataclass(frozen=True)
class World:
    """This process's place among the ranks."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


_WORLD = World()


def launched_size() -> int:
    """How many processes torchrun launched (WORLD_SIZE; 1 without it), known before `init` joins them."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init() -> World:
    """Join the process group torchrun describes (once); one process without torchrun."""
    global _WORLD
    size = launched_size()
    if size == 1 or torch_dist.is_initialized():
        return _WORLD
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # never NVLink multicast on shared hosts
    torch_dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    _WORLD = World(torch_dist.get_rank(), torch_dist.get_world_size())
    return _WORLD


def shutdown() -> None:
    """Leave the process group, if one was joined (every exit path of a command, so torch never warns
    that destroy_process_group() was not called); one process again afterwards."""
    global _WORLD
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
    _WORLD = World()


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


def strided(items: list) -> list:
    """This rank's items: every size-th one from its rank on (any count splits; order kept within a rank)."""
    w = world()
    return items[w.rank :: w.size]


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
    """All-reduce (sum) the gradients of `params` across ranks, flattened into one buffer.

    Sharded (FSDP) parameters are skipped: their gradients were already summed by reduce-scatter.
    """
    if not world().active:
        return
    params = [p for p in params if not isinstance(p, DTensor)]
    if not params:
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


def shard(body: Any) -> None:
    """FSDP2: shard each decoder layer of a model's decoder `body` (its `.layers`), and the body, across the ranks
    (gradients summed, not averaged)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    for layer in body.layers:
        fully_shard(layer)
    fully_shard(body)
    for module in body.modules():
        if isinstance(module, FSDPModule):
            # the loss is already normalised by the whole step's counts: sum, as the ddp path does
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)


def is_sharded(model: Any) -> bool:
    """True when FSDP has sharded some of the model's parameters."""
    return any(isinstance(p, DTensor) for p in model.parameters())


@contextmanager
def gathered(model: Any) -> Iterator[None]:
    """Inside the block every rank holds the full parameters of a sharded model (a collective; no-op otherwise).

    Forward passes inside it gather nothing, so ranks may run different numbers of them (generation
    stops at different lengths on different ranks) without waiting on each other.
    """
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in modules:
        m.set_reshard_after_forward(False)
        m.unshard()
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(True)


def full_state_dict(model: Any) -> dict:
    """A sharded model's whole state dict, on rank 0 (empty elsewhere); a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_value(x: torch.Tensor) -> float:
    """A scalar tensor as a float, gathering it first when it is a DTensor (a grad norm under FSDP)."""
    return float(x.full_tensor() if isinstance(x, DTensor) else x)


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if world().active:
        torch_dist.barrier()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
