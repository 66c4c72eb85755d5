"""Distinct values of a categorical feature, counted in one pass and mergeable across parts.

The compression ratio is relative to a full table of one row per distinct train value, so a
dataset needs each feature's distinct count, and nothing else about its values: no vocabulary, no
global aggregation. :class:`DistinctCounter` keeps the exact set of values while it holds at most
``EXACT_LIMIT`` of them (cheap, and it lets small features keep a table of their own: see
``values.parquet`` in :mod:`cafe_dist.data.schema`), and past that a HyperLogLog sketch
(``HLL_P`` = 14: 16 KiB per feature, a standard error of 0.81 %) with Ertl's estimator (2017,
"New cardinality estimation algorithms for HyperLogLog sketches"), which needs no bias tables.
Counters of different parts merge (sets by union, sketches by register maximum), so a distributed
conversion counts each file where it parses it and the driver merges a few KiB per file.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

EXACT_LIMIT = 1 << 18  # values kept exactly per feature (2 MiB of int64); past it, HyperLogLog
HLL_P = 14
HLL_M = 1 << HLL_P
_Q = 64 - HLL_P  # bits of the hash left for the rank
EXACT, SKETCH = "exact", f"hyperloglog (p={HLL_P}, standard error {1.04 / math.sqrt(HLL_M):.2%})"


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over int64/uint64 values, as uint64 (numpy wraps the products)."""
    x = values.astype(np.uint64, copy=True)
    x += np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def hll_registers(values: np.ndarray) -> np.ndarray:
    """HyperLogLog registers (uint8, ``HLL_M`` of them) of ``values``: register = the top
    ``HLL_P`` bits of the hash, rank = 1 + leading zeros of the other ``_Q`` bits (``_Q`` + 1 when
    they are all zero)."""
    regs = np.zeros(HLL_M, np.uint8)
    if len(values) == 0:
        return regs
    h = mix64(values)
    index = (h >> np.uint64(_Q)).astype(np.int64)
    rest = (h & np.uint64((1 << _Q) - 1)).astype(np.float64)  # < 2**50: exact in float64
    _, exponent = np.frexp(rest)  # rest = m * 2**e, m in [0.5, 1): floor(log2 rest) = e - 1
    rank = np.where(rest > 0, _Q - (exponent - 1), _Q + 1)
    seen = np.zeros((HLL_M, 64), bool)  # (register, rank) pairs present: a scatter, not a max-reduce
    seen[index, rank] = True
    top = 63 - np.argmax(seen[:, ::-1], axis=1)  # highest rank present per register (0 if none)
    return np.where(seen.any(axis=1), top, 0).astype(np.uint8)


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        z_old, z = z, z + x * y
        y += y
        if z == z_old:
            return z


def _tau(x: float) -> float:
    if x in (0.0, 1.0):
        return 0.0
    y, z = 1.0, 1.0 - x
    while True:
        x = math.sqrt(x)
        z_old = z
        y *= 0.5
        z -= (1 - x) ** 2 * y
        if z == z_old:
            return z / 3


def hll_estimate(regs: np.ndarray) -> float:
    """Ertl's improved raw estimator: unbiased over the whole range, small counts included."""
    counts = np.bincount(regs, minlength=_Q + 2).astype(np.float64)
    m = float(HLL_M)
    z = m * _tau(1 - counts[_Q + 1] / m)
    for k in range(_Q, 0, -1):
        z = 0.5 * (z + counts[k])
    z += m * _sigma(counts[0] / m)
    return m * m / (2 * math.log(2)) / z


class DistinctCounter:
    """One feature's distinct values: the exact set while small, a HyperLogLog sketch after."""

    __slots__ = ("_pending", "_pending_len", "exact", "regs")

    def __init__(self) -> None:
        self.exact: np.ndarray | None = np.zeros(0, np.int64)  # sorted distinct values, or None
        self.regs: np.ndarray | None = None  # the sketch, once the set outgrew EXACT_LIMIT
        self._pending: list[np.ndarray] = []
        self._pending_len = 0

    def add(self, values: np.ndarray) -> None:
        if self.exact is None:
            np.maximum(self.regs, hll_registers(values), out=self.regs)  # duplicates change nothing
            return
        u = pd.unique(values)  # hashing: linear time; sorted only when settled
        self._pending.append(u)
        self._pending_len += len(u)
        if self._pending_len > EXACT_LIMIT:
            self._settle()

    def _settle(self) -> None:
        if self.exact is not None and self._pending:
            self.exact = np.unique(np.concatenate([self.exact, *self._pending]))
            if len(self.exact) > EXACT_LIMIT:
                self.regs, self.exact = hll_registers(self.exact), None
        self._pending, self._pending_len = [], 0

    def merge(self, other: DistinctCounter) -> DistinctCounter:
        """Add ``other``'s values to this counter (``other`` is left as it was)."""
        other._settle()
        self._settle()
        if self.exact is not None and other.exact is not None:
            self._pending, self._pending_len = [other.exact], len(other.exact)
            self._settle()
            return self
        mine = self.regs if self.exact is None else hll_registers(self.exact)
        theirs = other.regs if other.exact is None else hll_registers(other.exact)
        self.regs, self.exact = np.maximum(mine, theirs), None
        return self

    @property
    def is_exact(self) -> bool:
        self._settle()
        return self.exact is not None

    def values(self) -> np.ndarray | None:
        """The sorted distinct values, or None once counted by the sketch."""
        self._settle()
        return self.exact

    def count(self) -> int:
        self._settle()
        return len(self.exact) if self.exact is not None else int(round(hll_estimate(self.regs)))

    @property
    def how(self) -> str:
        return EXACT if self.is_exact else SKETCH


class FeatureCounters:
    """A :class:`DistinctCounter` per feature, over the same rows."""

    def __init__(self, features: list[str]) -> None:
        self.features = list(features)
        self.counters = {f: DistinctCounter() for f in features}

    def add(self, sparse: np.ndarray) -> None:
        """``sparse``: (n, features) raw values, columns in ``features`` order."""
        for j, f in enumerate(self.features):
            self.counters[f].add(sparse[:, j])

    def merge(self, other: FeatureCounters) -> FeatureCounters:
        for f in self.features:
            self.counters[f].merge(other.counters[f])
        return self
