"""Elastic resume (``ray.elastic: true``): a checkpoint of N workers continues on M.

The data position is a segment of the epoch and the steps taken in it
(:mod:`cafe_dist.train.row_order`): the rows left when the segment began, dealt to the workers in
units of whole batches. Resumed on M workers, the rows no rank had trained are dealt again to the M
(a new segment), each worker reading only its own rows. So every row of the epoch is trained at
most once, and all of it but less than a last round of batches.

The batch: by default (``ray.elastic_batch: global``) a resumed run keeps the rows per step over
all workers that it started with, so each worker takes ``global / M`` rows (rounded): the run goes
on with the same number of steps and the same optimiser dynamics as had it never been resized
(otherwise 3 workers of 256 rows would take a third fewer, larger steps than the 2 workers before
them, and on a short stream land visibly lower). ``per_worker`` keeps ``train.batch_size`` per
worker instead: more throughput per step, other dynamics.

The rest of a checkpoint reshards as follows: the tables through DCP (it reads any sharding into
any other); state that every rank holds alike (the hot map, the coordinator's state, progress)
from rank 0; per-rank state through the method's
:meth:`~cafe_dist.embeddings.base.CompressedEmbedding.reshard_local_states` (CAFE: all old sketches
into each new one, scaled to a worker's share); RNG states by rank modulo the old world size.

Proof of "every sample exactly once": ``rows_digest``, the sum over trained rows of a 64-bit hash
of the row's index in the epoch, kept per rank and summed, equals the digest of the rows the deals
say were trained (a prefix ``[0, epoch_rows)`` when every unit is one batch) only if each of them
was trained exactly once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MASK = (1 << 64) - 1


def _splitmix(x: np.ndarray) -> np.ndarray:
    z = (x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def rows_digest(start: int, stop: int) -> int:
    """Sum (mod 2^64) of the hashes of row indices ``[start, stop)``."""
    total, chunk = 0, 1 << 22
    for lo in range(start, stop, chunk):
        with np.errstate(over="ignore"):
            total = (total + int(_splitmix(np.arange(lo, min(lo + chunk, stop), dtype=np.uint64)).sum(
                dtype=np.uint64))) & MASK
    return total


def per_worker_batch(global_batch: int, world_size: int) -> int:
    """Rows per worker that keep ``global_batch`` rows per step on ``world_size`` workers: the
    nearest whole number (the step then holds at most ``world_size / 2`` rows more or fewer)."""
    return max(1, round(global_batch / world_size))


def merge_states(states: list[dict[str, Any]], rank: int, world_size: int, embedding) -> dict[str, Any]:
    """This rank's local state, from the old ranks' ``states`` (rank order)."""
    first = states[0]
    out: dict[str, Any] = {k: v for k, v in first.items() if k not in ("embedding", "progress", "rng")}
    if "embedding" in first:
        out["embedding"] = embedding.reshard_local_states([s["embedding"] for s in states], world_size)
    if "progress" in first:
        progress = dict(first["progress"])
        # the rows digest is summed over ranks at the end: the old ranks' sum travels with rank 0
        progress["rows_digest"] = sum(s["progress"].get("rows_digest", 0) for s in states) & MASK if rank == 0 else 0
        progress["data_digest"] = states[rank]["progress"]["data_digest"] if rank < len(states) else 0
        out["progress"] = progress
    if "rng" in first:
        out["rng"] = states[rank % len(states)]["rng"]
    return out
