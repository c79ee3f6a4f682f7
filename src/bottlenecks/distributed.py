"""The few ``torch.distributed`` operations the library needs, safe to call in one process.

Every function works whether or not a process group exists: in a single process (or a
group of one) they are no-ops or the identity, so callers need no ``if distributed:``
branches. Under several processes (Lightning DDP, ``torchrun``) they are the usual
collectives and **every rank must call them in the same order**.

Collectives move tensors to the device the backend needs (CUDA for NCCL, CPU for gloo)
and results come back on the input's device. Call them only from code that every rank
runs (a training step, ``on_fit_start``), never from a branch whose condition differs
between ranks: a collective called on only some ranks hangs the others.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["all_gather_cat", "all_reduce_sum_", "barrier", "broadcast_", "is_distributed", "rank", "world_size"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available, initialised, and the world has more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in one process)."""
    import torch.distributed as dist

    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 in one process)."""
    import torch.distributed as dist

    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    """Wait until every rank reaches this call (nothing in one process)."""
    import torch.distributed as dist

    if is_distributed():
        if dist.get_backend() == "nccl" and torch.cuda.is_available():
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _backend_device(t: Tensor) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return t.device if t.device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_(t: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``t`` in place with rank ``src``'s ``t`` (same shape and dtype on every rank); returns ``t``."""
    import torch.distributed as dist

    if not is_distributed():
        return t
    dev = _backend_device(t)
    buf = t.contiguous() if t.device == dev else t.to(dev).contiguous()
    dist.broadcast(buf, src=src)
    if buf.data_ptr() != t.data_ptr():
        t.copy_(buf)
    return t


def all_reduce_sum_(t: Tensor) -> Tensor:
    """Replace ``t`` in place by the sum of ``t`` over all ranks; returns ``t``."""
    import torch.distributed as dist

    if not is_distributed():
        return t
    dev = _backend_device(t)
    buf = t.contiguous() if t.device == dev else t.to(dev).contiguous()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf.data_ptr() != t.data_ptr():
        t.copy_(buf)
    return t


def all_gather_cat(t: Tensor) -> Tensor:
    """Every rank's ``t`` concatenated along dim 0 in rank order; sizes along dim 0 may differ.

    The other dimensions and the dtype must agree across ranks. In one process: ``t``.
    """
    import torch.distributed as dist

    if not is_distributed():
        return t
    dev = _backend_device(t)
    n = world_size()
    sizes = torch.zeros(n, dtype=torch.long, device=dev)
    sizes[rank()] = t.shape[0]
    dist.all_reduce(sizes, op=dist.ReduceOp.SUM)
    counts = [int(s) for s in sizes.tolist()]
    longest = max(counts)
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t.to(dev)
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(t.device)
