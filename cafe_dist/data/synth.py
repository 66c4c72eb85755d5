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

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from cafe_dist.data.parsing import dense_transform
from cafe_dist.data.profile import (
    EMPIRICAL_MAX,
    QUANTILES,
    Profile,
    lifetimes,
    rank_cdf,
    renewals,
    sample_ranks,
    top_shares,
)
from cafe_dist.data.schema import (
    CRITEO_DENSE,
    CRITEO_KAGGLE_CARDINALITIES,
    CRITEO_SPARSE,
    MISSING_ID,
    DatasetMeta,
)
from cafe_dist.data.target import check_free_space, staged_dataset
from cafe_dist.data.writer import DatasetWriter
from cafe_dist.progress import row_bar

CHUNK = 1 << 18
CALIBRATION_ROWS = 50_000
# Profile mode's label model: the best AUC any model could reach on the stream (true click
# probabilities). Set from measurements of `full` (dim 16, one epoch, batch 2048, 10 M rows): at
# 0.83 it reached 0.8219, above what real DLRM reaches on Criteo Kaggle (0.78-0.81); at 0.81 it
# reaches 0.8016 with logloss 0.4485 (real DLRM: about 0.80 and 0.445). BENCHMARKS.md has the runs.
PROFILE_BAYES_AUC = 0.81
ID_SIGNAL_KNEE = 1000  # profile: an id's effect fades as (1 + rank / knee)^-1/2: rare ids carry little
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fast, well-mixed stateless hash of uint64 values."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


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
    drift_period: int = 0  # rows between rotations; 0 = rows // 4 (profile: 0 = its fitted drift; else a top id's lifetime)
    drift_fraction: float = 0.05  # fraction of each feature's id space the ranking rotates by
    missing_rate: float = 0.05
    # a fitted feature profile (cafe_dist.data.profile: "criteo-kaggle" or a JSON file): per-feature
    # cardinalities (unscaled), value laws, missing rates, dense distributions and click rate
    profile: str | None = None

    def cardinalities(self) -> list[int]:
        if self.profile is not None:
            return [c.cardinality for c in load_profile(self.profile).categorical]
        return [max(self.min_cardinality, int(round(c * self.cardinality_scale)))
                for c in CRITEO_KAGGLE_CARDINALITIES]

    def period(self) -> int:
        return self.drift_period or (4 * self.rows if self.profile is not None else max(1, self.rows // 4))

    def record(self, test_fraction: float) -> dict:
        """What ``meta.json`` keeps of the spec (``extra.synth``): generating again with a different
        record gives other data, so a dataset made from another spec is never silently reused."""
        return {**self.__dict__, "drift_period": self.period(), "cardinalities": self.cardinalities(),
                "test_fraction": test_fraction, "drift": self.drift_rule()}

    def drift_rule(self) -> str:
        """"fitted": the profile's per-feature drift; "period": ``drift_period``'s rule."""
        fitted = self.profile is not None and any(c.drift for c in load_profile(self.profile).categorical)
        return "fitted" if fitted and self.drift_period == 0 else "period"


@lru_cache(maxsize=4)
def load_profile(name: str) -> Profile:
    return Profile.load(name)


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
        self.label_scale = 1.0
        self.profile = load_profile(spec.profile) if spec.profile is not None else None
        if self.profile is not None:
            self._calibrate()

    def _calibrate(self) -> None:
        """Profile mode: the label model's scale and bias, set on the first rows of the stream so that
        the Bayes-optimal AUC is PROFILE_BAYES_AUC and the click rate is the profile's (bisections
        on a fixed draw: deterministic by seed)."""
        import torch
        from torchmetrics.functional.classification import binary_auroc

        rng = np.random.default_rng([self.spec.seed, 1 << 40])
        _, dense, present, parts = self._draw(0, CALIBRATION_ROWS, rng)
        labels_u = rng.random(CALIBRATION_ROWS)

        def auc_at(scale: float) -> float:
            self.label_scale, self.bias = scale, 0.0
            logit = self._logit(parts, dense, present)
            self.bias = self._bias_for(logit, self.profile.click_rate)
            p = _sigmoid(logit + self.bias)
            return float(binary_auroc(torch.from_numpy(p), torch.from_numpy((labels_u < p).astype(np.int64))))

        lo, hi = 0.05, 5.0
        for _ in range(18):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if auc_at(mid) < PROFILE_BAYES_AUC else (lo, mid)
        auc_at((lo + hi) / 2)

    @staticmethod
    def _bias_for(logit: np.ndarray, rate: float) -> float:
        lo, hi = -20.0, 20.0
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _sigmoid(logit + mid).mean() < rate else (lo, mid)
        return (lo + hi) / 2

    def rank_probabilities(self, feature: int) -> np.ndarray:
        """Probability that a row's value of ``feature`` is the id of each popularity rank (0 first;
        missing values excluded): the exact distribution the generator draws from."""
        if self.profile is not None:
            return self.profile.categorical[feature].rank_probabilities()
        card = int(self.cards[feature])  # a continuous Zipf(a): the Zipf-Mandelbrot law with q = 0
        return np.diff(rank_cdf(np.arange(card + 1, dtype=np.float64), card, float(self.alphas[feature]), 0.0))

    def missing_rate(self, feature: int) -> float:
        return self.profile.categorical[feature].missing_rate if self.profile is not None else self.spec.missing_rate

    def top_mass(self, features: list[int], n: int) -> float:
        """The share of these features' lookups that the ``n`` most frequent (feature, value) pairs
        serve, the missing value of each feature included: the coverage of a perfect hot set of
        ``n`` slots. Drift moves which ids are popular, not how popular the ranks are, so a hot set
        that tracked the drift perfectly would have this coverage at every row."""
        if not features or n <= 0:
            return 0.0
        top = top_shares([self.rank_probabilities(f) for f in features], [self.missing_rate(f) for f in features], n)
        return float(top.sum() / len(features))

    def raw_id(self, feature: int, slot: np.ndarray) -> np.ndarray:
        """Raw 32-bit value of the id occupying position ``slot`` of a feature's id space."""
        return (_mix64(slot.astype(np.uint64) ^ self.salts[feature]) & np.uint64(0xFFFFFFFF)).astype(np.int64)

    def top_ids(self, feature: int, row: int, k: int) -> np.ndarray:
        """The k most popular raw ids of a feature at a given row (ground truth for drift tests)."""
        card = int(self.cards[feature])
        ranks = np.arange(min(k, card), dtype=np.int64)
        if self.profile is not None:
            return self._profile_ids(feature, ranks, np.full(len(ranks), row, np.int64))
        shift = self._shift(np.array([row]), card)[0]
        return self.raw_id(feature, (ranks + shift) % card)

    def _profile_ids(self, feature: int, ranks: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Profile mode's drift: the id holding a popularity rank is renewed (a new id takes the rank,
        the old one is gone) every lifetime(rank) rows, at a phase of its own, so renewals are spread
        over the stream. By default the profile's fitted drift (:func:`cafe_dist.data.profile.fit_drift`:
        lifetime x rows x (1 + rank / 1000)^-exponent, per feature, as the real log changes between its
        thirds); with an explicit ``drift_period``, drift_period / sqrt(1 + rank / 1000) for every
        feature. Small features (cardinality <= EMPIRICAL_MAX) keep their values."""
        card = int(self.cards[feature])
        drift = self.profile.categorical[feature].drift
        if card <= EMPIRICAL_MAX:
            return self.raw_id(feature, ranks)
        if self.spec.drift_period == 0 and drift is not None:
            if drift["lifetime"] is None:  # the real log keeps this feature's values
                return self.raw_id(feature, ranks)
            life = lifetimes(ranks, drift["lifetime"] * self.spec.rows, drift["exponent"])
        else:
            life = lifetimes(ranks, self.spec.period(), 0.5)
        return self.raw_id(feature, ranks + card * renewals(ranks, rows, life, int(self.salts[-2])))

    def _shift(self, rows: np.ndarray, card: int) -> np.ndarray:
        step = max(1, int(round(card * self.spec.drift_fraction)))
        return (rows // self.spec.period()) * step

    # ---- profile mode -------------------------------------------------------------------------
    def _draw(self, start: int, n: int, rng: np.random.Generator):
        """Rows [start, start + n) of a profiled stream without labels: (sparse, dense, dense present,
        (sparse, ranks)) where ranks is each value's popularity rank (-1 where missing)."""
        rows = np.arange(start, start + n, dtype=np.int64)
        nf = len(CRITEO_SPARSE)
        u, miss_u = rng.random((n, nf)), rng.random((n, nf))
        sparse, ranks = np.empty((n, nf), np.int64), np.empty((n, nf), np.int64)
        for f, cp in enumerate(self.profile.categorical):  # 26 features, vectorised over rows
            rank = cp.sample_ranks(u[:, f])
            ids = self._profile_ids(f, rank, rows)
            missing = miss_u[:, f] < cp.missing_rate
            ids[missing] = MISSING_ID
            sparse[:, f], ranks[:, f] = ids, np.where(missing, -1, rank)
        dense = np.empty((n, len(CRITEO_DENSE)), np.float32)
        present = np.empty((n, len(CRITEO_DENSE)), bool)
        for j, dp in enumerate(self.profile.dense):
            present[:, j] = rng.random(n) >= dp.missing_rate
            dense[:, j] = np.where(present[:, j], np.interp(rng.random(n), QUANTILES, dp.quantiles), 0.0)
        return sparse, dense, present, (sparse, ranks)

    def _logit(self, parts, dense: np.ndarray, present: np.ndarray) -> np.ndarray:
        """The hidden label model (before the bias): per-id effects that fade with the id's rarity
        (most signal sits in ids seen often enough to learn), three feature crosses, dense terms."""
        sparse, ranks = parts
        n = len(sparse)
        fade = np.where(ranks >= 0, 1.0 / np.sqrt(1.0 + np.maximum(ranks, 0) / ID_SIGNAL_KNEE), 1.0)
        logit = np.zeros(n)
        for f in range(sparse.shape[1]):
            effect = _unit(sparse[:, f].astype(np.uint64) ^ self.salts[f] ^ np.uint64(0x5EED))
            logit += self.sparse_w[f] * effect * fade[:, f]
        for a, b in self.pairs:
            cross = _mix64(sparse[:, a].astype(np.uint64) ^ self.salts[-1]) ^ sparse[:, b].astype(np.uint64)
            logit += 0.5 * _unit(cross) * fade[:, a] * fade[:, b]
        q = np.array([dp.quantiles for dp in self.profile.dense])  # (13, 101)
        mid, spread = q[:, 50], np.maximum(q[:, 75] - q[:, 25], 1e-3)
        logit += (np.where(present, (dense - mid) / spread, 0.0) * self.dense_w).sum(axis=1)
        return logit * self.label_scale

    def chunk(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows [start, start + n): (label int8, dense float32 (n, 13), sparse int64 (n, 26))."""
        rng = np.random.default_rng([self.spec.seed, start])
        if self.profile is not None:
            sparse, dense, present, parts = self._draw(start, n, rng)
            p = _sigmoid(self._logit(parts, dense, present) + self.bias)
            return (rng.random(n) < p).astype(np.int8), dense, sparse
        rows = np.arange(start, start + n, dtype=np.int64)
        nf = len(CRITEO_SPARSE)
        sparse = np.empty((n, nf), np.int64)
        logit = np.full(n, self.bias)
        u = rng.random((n, nf))
        missing = rng.random((n, nf)) < self.spec.missing_rate
        for f in range(nf):  # loop over 26 features, vectorised over rows
            card = int(self.cards[f])
            rank = sample_ranks(u[:, f], card, float(self.alphas[f]), 0.0)
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


# disk a generated row takes at the peak of writing (the staged raw rows, then the splits, ~64 B a
# row once written), measured on the default spec with a margin
PEAK_BYTES_PER_ROW = 200


def generate_synthetic(
    out_dir: str | Path,
    spec: SynthSpec,
    *,
    test_fraction: float = 1 / 7,
    progress: bool = True,
    overwrite: bool = False,
) -> DatasetMeta:
    """Generate into ``out_dir`` (staged, swapped in when complete; see :mod:`cafe_dist.data.target`)."""
    check_free_space(out_dir, spec.rows * PEAK_BYTES_PER_ROW, f"{spec.rows:,} synthetic rows")
    gen = SynthGenerator(spec)
    extra = {"synth": spec.record(test_fraction)}
    with staged_dataset(out_dir, overwrite) as stage:
        writer = DatasetWriter(stage, "synth", CRITEO_DENSE, CRITEO_SPARSE, test_fraction=test_fraction,
                               sources=["synthetic"], extra_meta=extra, progress=progress)
        with row_bar("generate", spec.rows, enabled=progress) as bar:
            for start in range(0, spec.rows, CHUNK):
                n = min(CHUNK, spec.rows - start)
                writer.add_rows(*gen.chunk(start, n))
                bar.update(n)
        return writer.finalize()
