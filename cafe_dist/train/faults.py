"""Markers beside a run's checkpoints: how often its worker group started (restarts), and faults
injected on purpose (``fault.*``) to test recovery, each fired once per run."""

from __future__ import annotations

import logging
import os
import signal

from cafe_dist.config import FaultConfig
from cafe_dist.data import storage

log = logging.getLogger("cafe_dist.train")


class RunMarkers:
    def __init__(self, run_dir: str, fit_id: str) -> None:
        self.dir, self.fit_id = run_dir, fit_id

    def count_start(self) -> int:
        """Record this start of the worker group; returns how many came before it in this fit."""
        starts = storage.join(self.dir, ".starts")
        before = sum(1 for n in storage.list_dir(starts) if n.startswith(self.fit_id))
        storage.write_bytes(storage.join(starts, f"{self.fit_id}-{before}"), b"")
        return before

    def fire_once(self, fault: str) -> bool:
        """True the first time a fault is due in this run (a marker keeps it from firing again)."""
        marker = storage.join(self.dir, ".faults", fault)
        if storage.is_file(marker):
            return False
        storage.write_bytes(marker, b"")
        return True


class FaultInjector:
    """Kills the method's run service (rank 0 does it: CAFE's coordinator) or the last rank after the
    configured step."""

    def __init__(self, config: FaultConfig, markers: RunMarkers, rank: int, world_size: int, service) -> None:
        self.config, self.markers, self.rank, self.world_size = config, markers, rank, world_size
        self.service = service  # a RunService, or None

    def after_step(self, step: int) -> None:
        f = self.config
        if f.kill_coordinator_at_step == step and self.rank == 0 and self.service is not None \
                and self.markers.fire_once("kill_coordinator"):
            log.warning("fault: killing the coordinator after step %d", step)
            self.service.kill()
        if f.kill_worker_at_step == step and self.rank == self.world_size - 1 \
                and self.markers.fire_once("kill_worker"):
            log.warning("fault: killing rank %d (pid %d) after step %d", self.rank, os.getpid(), step)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)
