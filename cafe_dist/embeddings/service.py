"""A process one run of a method needs beside its workers (CAFE: the hot-set coordinator). The
launcher and the trainer reach it only through this contract, knowing neither the method nor what
the process does: the driver starts and stops it; every worker attaches to it; after a resume the
workers restore its state and join it; rank 0 snapshots its state into every checkpoint."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

# the checkpoint part holding a service's state (its name from when the only service was CAFE's)
CHECKPOINT_PART = "coordinator"


class RunService(ABC):
    # ---- driver ----------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def start(cls, run_name: str, state_dir: str) -> Any:
        """Start the run's service (crash-safe: it keeps its state under ``state_dir``); returns a
        handle for :meth:`stop`."""

    @classmethod
    @abstractmethod
    def stop(cls, handle: Any) -> None:
        """End it when the run's ``fit`` ends, however it ends."""

    # ---- worker ----------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def attach(cls, run_name: str, rank: int, world_size: int) -> RunService:
        """This worker's view of the service the driver started for ``run_name``."""

    @abstractmethod
    def snapshot(self, emb: Any) -> dict[str, Any] | None:
        """The service's state for a checkpoint, once nothing ``emb`` sent is still in flight
        (rank 0's; None on other ranks)."""

    @abstractmethod
    def restore(self, state: dict[str, Any] | None) -> None:
        """The state a resumed run's checkpoint held, to :meth:`join` with."""

    @abstractmethod
    def join(self, emb: Any) -> None:
        """Restart the service from the restored state (or from nothing) and connect ``emb`` to it;
        every rank calls this at the same point."""

    @abstractmethod
    def restarted(self) -> bool:
        """Whether the service crashed and came back during the run (reported in the result)."""

    @abstractmethod
    def kill(self) -> None:
        """Crash it (fault injection: ``fault.kill_coordinator_at_step``)."""
