"""The few collectives the library needs, as no-ops in one process.

Every function works the same whether or not ``torch.distributed`` is initialised: in one
process (or a process group of one) they return their input unchanged, so layers can call
them unconditionally. Under several processes they are *collectives*: every rank must call
them, in the same order, with tensors of the same shape (``all_gather_cat`` allows a
different first dimension) — a collective called on only some ranks hangs the others.
Call them only from code that every rank runs: a training step, ``on_fit_start``, never
from a branch whose condition differs between ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_cat", "all_reduce_sum_", "barrier", "broadcast_", "is_distributed", "rank", "world_size"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available, initialised and has more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 in one process)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 in one process)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait until every process reaches this call (nothing in one process)."""
    if is_distributed():
        dist.barrier()


def broadcast_(t: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``t`` in place with rank ``src``'s copy; returns ``t``."""
    if is_distributed():
        dist.broadcast(t, src=src)
    return t


def all_reduce_sum_(t: Tensor) -> Tensor:
    """Replace ``t`` in place by its sum over all processes; returns ``t``."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_cat(t: Tensor) -> Tensor:
    """Every process's ``t`` concatenated along dim 0, in rank order (``t`` itself in one process).

    The first dimension may differ between processes; the other dimensions must agree.
    """
    if not is_distributed():
        return t
    n = world_size()
    size = torch.tensor([t.shape[0]], device=t.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(n)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    longest = max(counts)
    padded = t
    if t.shape[0] < longest:  # all_gather needs equal shapes: pad, then cut the padding off
        padded = torch.cat([t, t.new_zeros((longest - t.shape[0], *t.shape[1:]))])
    out = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[:c] for o, c in zip(out, counts)])
