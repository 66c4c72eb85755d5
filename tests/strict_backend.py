"""A process-group backend that, like NCCL, takes tensors on one accelerator device only, for tests
on a CPU-only machine.

``fakegpu`` is a device (PyTorch's PrivateUse1 key under that name) whose tensors keep their data in
a CPU tensor (``.raw``): every operator on them runs on the CPU data and wraps the result back. The
``strict`` backend is registered for ``fakegpu`` alone; it refuses any tensor elsewhere (as NCCL
refuses CPU tensors) and runs the collective through gloo on the CPU data. Import this module in the
process (before ``init_process_group("strict")``); it registers both once per process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_map
from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

DEVICE_TYPE = "fakegpu"
BACKEND = "strict"


class FakeGpuTensor(torch.Tensor):
    """A ``fakegpu`` tensor: the device's metadata, its data in ``raw`` (a CPU tensor)."""

    raw: torch.Tensor

    @staticmethod
    def __new__(cls, raw: torch.Tensor) -> FakeGpuTensor:
        res = torch._C._acc.create_empty_tensor(raw.shape, raw.dtype)
        res.__class__ = cls
        res.raw = raw
        return res

    __torch_function__ = torch._C._disabled_torch_function_impl


def _unwrap(x):
    if isinstance(x, FakeGpuTensor):
        return x.raw
    if isinstance(x, torch.device) and x.type == DEVICE_TYPE:
        return torch.device("cpu")
    return x


def _wrap(x):
    return FakeGpuTensor(x) if isinstance(x, torch.Tensor) and not isinstance(x, FakeGpuTensor) else x


def _on_fakegpu(op, *args, **kwargs):
    """Every operator with a ``fakegpu`` tensor or device: on the CPU data, the result wrapped."""
    if str(op).startswith("aten._copy_from"):  # device <-> CPU copies (``.to``, ``copy_``)
        src, dst = args[0], args[1]
        _unwrap(dst).copy_(_unwrap(src))
        return dst
    unwrapped = tree_map(_unwrap, args)
    out = op(*unwrapped, **tree_map(_unwrap, kwargs))
    if unwrapped and isinstance(out, torch.Tensor) and out is unwrapped[0]:  # in place: the tensor itself
        return args[0]
    return tree_map(_wrap, out)


class StrictBackend(dist.ProcessGroup):
    """Collectives on ``fakegpu`` tensors only (NCCL's rule with a device this machine has)."""

    def __init__(self, store, rank: int, size: int, timeout) -> None:
        super().__init__(rank, size)
        self.inner = dist.ProcessGroupGloo(dist.PrefixStore(BACKEND, store), rank, size, timeout)

    @staticmethod
    def _raw(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        for t in tensors:
            if t.device.type != DEVICE_TYPE:
                raise RuntimeError(f"{BACKEND} backend (like NCCL): tensors must be on {DEVICE_TYPE}, got one on "
                                   f"{t.device}")
        return [t.raw for t in tensors]

    def allreduce(self, tensors, opts):
        return self.inner.allreduce(self._raw(tensors), opts)

    def allgather(self, outputs, inputs, opts):
        return self.inner.allgather([self._raw(o) for o in outputs], self._raw(inputs), opts)

    def broadcast(self, tensors, opts):
        return self.inner.broadcast(self._raw(tensors), opts)

    def barrier(self, opts):
        return self.inner.barrier(opts)

    def getBackendName(self) -> str:
        return BACKEND


def register() -> None:
    """Set up the device and the backend in this process (once)."""
    if BACKEND in dist.Backend.backend_capability:
        return
    _setup_privateuseone_for_python_backend(DEVICE_TYPE)
    lib = torch.library.Library("_", "IMPL")
    lib.fallback(_on_fakegpu, dispatch_key="PrivateUse1")
    register.lib = lib  # kept alive: the registration lasts as long as the library object
    dist.Backend.register_backend(BACKEND, StrictBackend, devices=[DEVICE_TYPE])
