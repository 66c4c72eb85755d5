"""Checkpoints of a training run: which state they hold, when they are written, and resuming.

The state is a dict of named parts, each saved and restored by its owner: the sharded model with
the fused optimizer and the dense optimizer (through DCP, in place), and per rank the embedding
method's state, the training progress (data position included), the RNGs and the coordinator's
state. Every rank writes its part and reports it; Ray merges them into one directory and keeps the
newest ``checkpoint.keep``.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import ray.train
import torch

from cafe_dist.checkpoint_dirs import (
    Found,
    dir_name,
    find_latest,
    load_rank_files,
    resize_message,
    write_rank_files,
)
from cafe_dist.collectives import broadcast_object
from cafe_dist.config import ConfigError


@dataclass
class Progress:
    """Where training stands: saved in every checkpoint, so a resumed run continues exactly here."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # steps of ``epoch`` taken
    samples: int = 0
    epoch_rows: int = 0  # rows of this epoch trained by all ranks
    # the data position (cafe_dist.train.row_order): the rows of the epoch left when this segment of it
    # began, how they were dealt (workers, rows per worker and step, rows per unit), the steps taken since
    segment: list[list[int]] = field(default_factory=list)
    segment_world: int = 0  # 0: no segment yet (a fresh run, or a checkpoint from before these fields)
    segment_batch: int = 0
    segment_unit: int = 0
    segment_steps: int = 0
    global_batch: int = 0  # elastic runs: rows per step over all workers, kept when resumed on another count
    global_batch_from: int = 0  # ... and the train.batch_size it came from (changing that sets a new one)
    rows_digest: int = 0  # sum of hashes of the epoch row indices this rank trained on (cafe_dist.train.elastic)
    data_digest: int = 0  # CRC32 chained over every batch this rank trained on, in order
    hot_map_digest: int = 0  # chained over the per-step state checksum (hot map / id maps)
    train_time_s: float = 0.0  # in earlier attempts
    totals: dict[str, float] = field(default_factory=dict)  # summed counters; levels (hot, churn) kept
    checksums: list[int] = field(default_factory=list)  # state checksum after every step
    trace: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True)
class Part:
    """One piece of per-rank state: how to read it for a checkpoint (None: nothing to save now) and
    how to put it back."""

    save: Callable[[], Any]
    load: Callable[[Any], None]


def rng_part() -> Part:
    def save() -> dict[str, Any]:
        return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}

    def load(state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])

    return Part(save, load)


def progress_part(progress: Progress) -> Part:
    def load(state: dict[str, Any]) -> None:
        for k, v in Progress(**state).__dict__.items():
            setattr(progress, k, v)

    return Part(lambda: asdict(progress), load)


class Checkpointer:
    """Owns the run's checkpoints: :meth:`resume` restores every part from the newest complete one,
    :meth:`due` says when a periodic one is due, :meth:`save` writes one (``final``: after the last
    step, carrying the result; it holds the state too when ``at_end`` and the last periodic
    checkpoint is older)."""

    def __init__(self, run_dir: str, rank: int, world_size: int, dcp_state: Callable[[], dict[str, Any]],
                 parts: dict[str, Part], *, every_steps: int | None, at_end: bool, info: dict[str, Any],
                 reshard: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None) -> None:
        self.run_dir, self.rank, self.world_size = run_dir, rank, world_size
        self.dcp_state, self.parts = dcp_state, parts
        self.reshard = reshard  # elastic runs: this rank's state from every old rank's (train.elastic)
        self.every_steps, self.at_end, self.info = every_steps, at_end, info
        self.found: Found | None = None
        self.saved_at = -1  # step of the newest checkpoint with state

    def resume(self) -> Found | None:
        """Load the newest complete checkpoint of the run into every part, if there is one."""
        found = broadcast_object(find_latest(self.run_dir) if self.rank == 0 else None)
        if found is None:
            return None
        if found.world_size == self.world_size:
            local = load_rank_files(found.path, [self.rank], self.dcp_state())[0]
        elif self.reshard is not None and found.info.get("elastic"):
            local = self.reshard(load_rank_files(found.path, list(range(found.world_size)), self.dcp_state()))
        else:
            raise ConfigError(resize_message(found, self.world_size))
        for name, part in self.parts.items():
            if name in local:
                part.load(local[name])
        # a run's final checkpoint is replaced by the next final one at the same step (same directory
        # name): that one must then carry the state again, or the run would lose its tables
        self.found, self.saved_at = found, (-1 if found.final else found.step)
        return found

    def due(self, step: int) -> bool:
        return self.every_steps is not None and step % self.every_steps == 0

    def save(self, step: int, metrics: dict[str, Any], final: bool = False,
             result: dict[str, Any] | None = None) -> None:
        """Every rank writes its part and reports it (a barrier: every rank calls this at the same step)."""
        with_state = not final or (self.at_end and self.saved_at != step)
        local = None
        if with_state:
            local = {name: state for name, part in self.parts.items() if (state := part.save()) is not None}
            self.saved_at = step
        with tempfile.TemporaryDirectory() as tmp:
            extra = {"result.json": json.dumps(result, indent=2)} if result is not None and self.rank == 0 else {}
            write_rank_files(tmp, self.rank, self.world_size, step, self.dcp_state() if with_state else None,
                             local, extra, info=self.info)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=dir_name(step, final))
