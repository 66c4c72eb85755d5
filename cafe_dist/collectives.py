"""Collectives that degrade to no-ops outside a process group (one code path for 1 and N workers).

One place decides where a collective's tensors live (:func:`group_device`): NCCL takes CUDA tensors
on the rank's current device only, gloo CPU ones. Every collective cafe-dist makes goes through here,
so its callers may hand over tensors wherever they keep them (the trainer's counters on the CPU,
CAFE's migration on the device of the hot keys): each is moved to the group's device for the call
and the result comes back where the caller's tensor was.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when no process group is up."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def group_device() -> torch.device:
    """The device the default process group's backend takes tensors on: the CPU when it takes CPU
    tensors (gloo), else the rank's current device of the accelerator it is registered for (NCCL:
    the rank's CUDA device)."""
    if world()[1] == 1:
        return torch.device("cpu")
    kinds = dist.Backend.backend_capability.get(dist.get_backend(), ["cpu"])
    if "cpu" in kinds:
        return torch.device("cpu")
    return torch.device(kinds[0], torch.get_device_module(kinds[0]).current_device())


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0 in rank order (sizes may differ between ranks)."""
    _, n = world()
    if n == 1:
        return t
    dev = group_device()
    size = torch.tensor([t.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(size) for _ in range(n)]
    dist.all_gather(sizes, size)
    sizes_i = [int(s) for s in sizes]
    top = max(sizes_i)
    padded = torch.zeros((top, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t.to(dev)
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes_i)]).to(t.device)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks, in place (through the group's device when it lives elsewhere)."""
    if world()[1] > 1:
        dev = group_device()
        if t.device == dev:
            dist.all_reduce(t)
        else:
            on = t.to(dev)
            dist.all_reduce(on)
            t.copy_(on)
    return t


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled through a tensor on the group's device)."""
    box = [obj]
    if world()[1] > 1:
        dist.broadcast_object_list(box, src=0, device=group_device())
    return box[0]


def barrier() -> None:
    if world()[1] > 1:
        dev = group_device()
        dist.barrier(device_ids=[dev.index] if dev.type == "cuda" else None)
