"""Which rows of the split each rank trains, in which order, and where a resumed run picks up.

The rows of an epoch still to train (at first the whole split, ``[(0, rows)]``) are cut into
*units* of ``unit`` rows (a whole number of batches, at least a Parquet row group, cut at multiples
of ``unit`` in the split so that a unit covers whole row groups) and dealt round-robin: rank r
takes units r, r + W, r + 2W, ... and cuts its own stream of rows into batches. So

- every rank reads only its own rows, each row group by one rank (an elastic worker no longer reads
  the whole stream: W times fewer bytes);
- at any step the ranks train rows that lie within W units of each other: the time order of a click
  log is kept at the grain of a unit (a global batch of W x ``batch`` consecutive rows when the unit
  is one batch);
- the rows that do not fill a last round of W units are cut into batches and dealt one by one, so an
  epoch drops fewer than W batches of rows (as a split stream with ``drop_last`` did);
- a position is a step count: rank r's k-th batch is found by arithmetic on its units, and read
  from the row groups that hold it (``RowReader``) — a resumed run seeks, it does not re-read.

When a run resumes with another number of workers (``ray.elastic``) or another batch size, the rows
it had not trained (:meth:`Deal.remaining`: a few part-trained units, then the rest of the epoch)
are dealt again the same way: a new *segment* of the epoch. The checkpoint keeps the segment's
rows, its deal and the steps taken in it (:class:`~cafe_dist.train.checkpointer.Progress`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

Interval = tuple[int, int]


def unit_rows(batch: int, row_group: int) -> int:
    """The smallest whole number of batches that covers a row group."""
    return batch * max(1, -(-row_group // batch))


def _cut(start: int, stop: int, step: int, origin: int) -> np.ndarray:
    """``[start, stop)`` cut at ``origin + k * step``: (n, 2) intervals."""
    if stop <= start:
        return np.zeros((0, 2), np.int64)
    first = origin + ((start - origin) // step + 1) * step
    edges = np.concatenate([[start], np.arange(first, stop, step, dtype=np.int64), [stop]]).astype(np.int64)
    return np.stack([edges[:-1], edges[1:]], axis=1)


@dataclass(frozen=True)
class Deal:
    """``intervals`` (sorted, disjoint ``[start, stop)`` rows of the split) dealt to ``world`` ranks
    that train ``batch`` rows each a step, in units of ``unit`` rows."""

    intervals: tuple[Interval, ...]
    world: int
    batch: int
    unit: int

    @classmethod
    def epoch(cls, rows: int, world: int, batch: int, row_group: int) -> Deal:
        return cls(((0, rows),) if rows else (), world, batch, unit_rows(batch, row_group))

    @cached_property
    def _units(self) -> np.ndarray:
        """(n, 2): the units in dealing order. Whole rounds of W units first, cut at multiples of
        ``unit``; the rows after them cut into batches from where the rounds end."""
        iv = np.asarray(self.intervals, np.int64).reshape(-1, 2)
        lengths = iv[:, 1] - iv[:, 0]
        total = int(lengths.sum())
        head = total - total % (self.world * self.unit)  # rows dealt in whole rounds of units
        cum = np.concatenate([[0], np.cumsum(lengths)])
        pieces = []
        for (a, b), before in zip(iv.tolist(), cum[:-1].tolist()):
            boundary = a + max(0, min(head - before, b - a))  # where this interval's rows leave the rounds
            pieces.append(_cut(a, boundary, self.unit, 0))
            if boundary < b:  # batches counted from the interval's first row after the rounds
                pieces.append(_cut(boundary, b, self.batch, boundary))
        return np.concatenate(pieces) if pieces else np.zeros((0, 2), np.int64)

    def stream(self, rank: int) -> np.ndarray:
        """(n, 2): rank ``rank``'s rows, in training order."""
        return self._units[rank::self.world]

    @cached_property
    def _ends(self) -> list[np.ndarray]:
        return [np.cumsum(s[:, 1] - s[:, 0]) for s in (self.stream(r) for r in range(self.world))]

    def steps(self) -> int:
        """Steps every rank can take with whole batches."""
        return min((int(e[-1]) if len(e) else 0) // self.batch for e in self._ends) if self.world else 0

    def rows_of(self, rank: int, step: int) -> list[Interval]:
        """The rows of rank ``rank``'s batch at ``step`` (0-based within this deal)."""
        return _slice(self.stream(rank), self._ends[rank], step * self.batch, (step + 1) * self.batch)

    def remaining(self, steps_done: int) -> tuple[Interval, ...]:
        """The rows no rank trained in its first ``steps_done`` steps, sorted and joined."""
        left = []
        for rank in range(self.world):
            ends = self._ends[rank]
            total = int(ends[-1]) if len(ends) else 0
            left.extend(_slice(self.stream(rank), ends, steps_done * self.batch, total))
        return join(left)


def _slice(stream: np.ndarray, ends: np.ndarray, lo: int, hi: int) -> list[Interval]:
    """Positions ``[lo, hi)`` of a stream of intervals whose running lengths are ``ends``."""
    out: list[Interval] = []
    i = int(np.searchsorted(ends, lo, side="right"))
    while i < len(stream) and lo < hi:
        start, stop = int(stream[i, 0]), int(stream[i, 1])
        before = int(ends[i]) - (stop - start)
        a = start + (lo - before)
        b = min(stop, start + (hi - before))
        out.append((a, b))
        lo += b - a
        i += 1
    return out


def join(intervals: list[Interval]) -> tuple[Interval, ...]:
    """Sorted, with touching intervals merged."""
    out: list[list[int]] = []
    for a, b in sorted(i for i in intervals if i[1] > i[0]):
        if out and out[-1][1] == a:
            out[-1][1] = b
        else:
            out.append([a, b])
    return tuple((a, b) for a, b in out)


def eval_batches(rows: int, world: int, rank: int, batch: int) -> list[Interval]:
    """Rank ``rank``'s part of a split for evaluation: a contiguous ``1/world`` of its rows, in as
    many batches as every other rank (the model's forward is a collective), none over ``batch`` rows."""
    bounds = [rows * r // world for r in range(world + 1)]
    longest = max(bounds[r + 1] - bounds[r] for r in range(world)) if world else 0
    n = -(-longest // batch) if longest else 0
    lo, hi = bounds[rank], bounds[rank + 1]
    edges = [lo + (hi - lo) * k // n for k in range(n + 1)] if n else [lo]
    return [(edges[k], edges[k + 1]) for k in range(n)]
