"""Criteo-shaped synthetic click logs with Zipf skew, a hidden ground truth, and drift.

Why these pieces:
- Per-feature cardinalities follow Criteo Kaggle's (scaled), and ids are Zipf-skewed, so the
  hot/cold structure that CAFE exploits is there.
- Labels come from a hidden logistic model whose per-id weights are a hash of the raw id, so an
  embedding can learn them (AUC is learnable) without storing a table of ground truth.
- Drift: every ``drift_period`` rows the rank → id mapping of each feature rotates by a fraction of
  its cardinality, so yesterday's popular ids go cold and cold ids become popular. A method that
  tracks importance online must follow that; a static one cannot.
Everything is a function of (seed, row index), so output is deterministic by seed and chunk-free.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cafe_dist.data.parsing import dense_transform
from cafe_dist.data.schema import (
    CRITEO_DENSE,
    CRITEO_KAGGLE_CARDINALITIES,
    CRITEO_SPARSE,
    MISSING_ID,
    DatasetMeta,
)
from cafe_dist.data.writer import DatasetWriter

CHUNK = 1 << 18
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fast, well-mixed stateless hash of uint64 values."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _unit(x: np.ndarray) -> np.ndarray:
    """Hash → float in [-1, 1)."""
    return (_mix64(x) >> np.uint64(11)).astype(np.float64) / float(1 << 52) - 1.0


@dataclass(frozen=True)
class SynthSpec:
    rows: int
    seed: int = 0
    cardinality_scale: float = 0.01
    min_cardinality: int = 3
    zipf_a: float = 1.1
    drift_period: int = 0  # rows between rotations; 0 = rows // 4
    drift_fraction: float = 0.05  # fraction of each feature's id space the ranking rotates by
    missing_rate: float = 0.05

    def cardinalities(self) -> list[int]:
        return [max(self.min_cardinality, int(round(c * self.cardinality_scale)))
                for c in CRITEO_KAGGLE_CARDINALITIES]

    def period(self) -> int:
        return self.drift_period or max(1, self.rows // 4)


class SynthGenerator:
    def __init__(self, spec: SynthSpec) -> None:
        self.spec = spec
        self.cards = np.array(spec.cardinalities(), dtype=np.int64)
        rng = np.random.default_rng(spec.seed)
        nf = len(CRITEO_SPARSE)
        self.salts = rng.integers(1, 1 << 62, size=nf + 2, dtype=np.int64).astype(np.uint64)
        # Per-feature skew around zipf_a, and how much each feature says about the label.
        self.alphas = spec.zipf_a + rng.uniform(-0.05, 0.15, size=nf)
        strength = rng.uniform(0.1, 1.0, size=nf) * (rng.random(nf) < 0.7)
        self.sparse_w = strength
        self.dense_mu = rng.uniform(0.5, 4.0, size=len(CRITEO_DENSE))
        self.dense_sigma = rng.uniform(0.5, 1.5, size=len(CRITEO_DENSE))
        self.dense_w = rng.normal(0.0, 0.25, size=len(CRITEO_DENSE))
        self.pairs = [(0, 1), (2, 3), (5, 10)]  # hidden feature crosses
        self.bias = -2.0

    def _zipf_rank(self, u: np.ndarray, card: int, a: float) -> np.ndarray:
        """Inverse CDF of a continuous Zipf(a) on [1, card + 1), floored to ranks 0..card-1."""
        top = (card + 1.0) ** (1.0 - a)
        r = (1.0 + u * (top - 1.0)) ** (1.0 / (1.0 - a))
        return np.clip(np.floor(r).astype(np.int64) - 1, 0, card - 1)

    def raw_id(self, feature: int, slot: np.ndarray) -> np.ndarray:
        """Raw 32-bit value of the id occupying position ``slot`` of a feature's id space."""
        return (_mix64(slot.astype(np.uint64) ^ self.salts[feature]) & np.uint64(0xFFFFFFFF)).astype(np.int64)

    def top_ids(self, feature: int, row: int, k: int) -> np.ndarray:
        """The k most popular raw ids of a feature at a given row (ground truth for drift tests)."""
        card = int(self.cards[feature])
        shift = self._shift(np.array([row]), card)[0]
        return self.raw_id(feature, (np.arange(min(k, card)) + shift) % card)

    def _shift(self, rows: np.ndarray, card: int) -> np.ndarray:
        step = max(1, int(round(card * self.spec.drift_fraction)))
        return (rows // self.spec.period()) * step

    def chunk(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows [start, start + n): (label int8, dense float32 (n, 13), sparse int64 (n, 26))."""
        rng = np.random.default_rng([self.spec.seed, start])
        rows = np.arange(start, start + n, dtype=np.int64)
        nf = len(CRITEO_SPARSE)
        sparse = np.empty((n, nf), np.int64)
        logit = np.full(n, self.bias)
        u = rng.random((n, nf))
        missing = rng.random((n, nf)) < self.spec.missing_rate
        for f in range(nf):  # loop over 26 features, vectorised over rows
            card = int(self.cards[f])
            rank = self._zipf_rank(u[:, f], card, self.alphas[f])
            slot = (rank + self._shift(rows, card)) % card
            ids = self.raw_id(f, slot)
            ids[missing[:, f]] = MISSING_ID
            sparse[:, f] = ids
            logit += self.sparse_w[f] * _unit(ids.astype(np.uint64) ^ self.salts[f] ^ np.uint64(0x5EED))
        for a, b in self.pairs:
            cross = _mix64(sparse[:, a].astype(np.uint64) ^ self.salts[-1]) ^ sparse[:, b].astype(np.uint64)
            logit += 0.5 * _unit(cross)
        raw_dense = np.floor(np.exp(rng.normal(self.dense_mu, self.dense_sigma, size=(n, len(CRITEO_DENSE)))))
        present = rng.random(raw_dense.shape) >= 0.1
        dense = dense_transform(raw_dense, present)
        z = (dense - self.dense_mu.astype(np.float32)) / self.dense_sigma.astype(np.float32)
        logit += (np.where(present, z, 0.0) * self.dense_w).sum(axis=1)
        label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
        return label, dense, sparse


def generate_synthetic(
    out_dir: str | Path,
    spec: SynthSpec,
    *,
    test_fraction: float = 1 / 7,
    progress: bool = True,
) -> DatasetMeta:
    gen = SynthGenerator(spec)
    extra = {"synth": {**spec.__dict__, "drift_period": spec.period(), "cardinalities": spec.cardinalities()}}
    writer = DatasetWriter(out_dir, "synth", CRITEO_DENSE, CRITEO_SPARSE, test_fraction=test_fraction,
                           sources=["synthetic"], extra_meta=extra, progress=progress)
    with tqdm(total=spec.rows, desc="generate", unit="row", unit_scale=True, file=sys.stderr,
              disable=not progress, mininterval=1.0) as bar:
        for start in range(0, spec.rows, CHUNK):
            n = min(CHUNK, spec.rows - start)
            writer.add_rows(*gen.chunk(start, n))
            bar.update(n)
    return writer.finalize()
