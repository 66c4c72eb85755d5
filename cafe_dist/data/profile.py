"""Feature profiles for the generator: what a real click log looks like, feature by feature.

A profile holds, per categorical feature, the full cardinality (published, e.g. Criteo Kaggle's
after DLRM preprocessing), the missing rate, the top value's share and the parameters of a
Zipf-Mandelbrot law over the other values' ranks, P(rank k) ∝ (k + q)^-a for k >= 1, fitted so that
a sample of the size of the real one has the real sample's number of distinct values and log-log
rank/count slope; per dense feature the share of zeros and quantiles of log(1 + x); and the click
rate. :func:`fit_profile` fits one from a
real file (``cafe-dist data fit-profile``); the package ships the result for Criteo Kaggle
(``profiles/criteo_kaggle.json``, fitted on the uniform 0.3 % sample), so the generator needs no
real data.

Why this shape: a pure Zipf law has one parameter and cannot match the top value (often a default
value: C10's covers 22 % of rows), the head's slope (what a hot set of N ids covers) and the tail
(how many values a sample meets, i.e. how many ids a table must hold) at once; the top value's own
share and the shift q decouple them. The law is sampled
by inverting its continuous CDF, so drawing is O(1) per value for any cardinality, 10^7 included.

Drift (``CategoricalProfile.drift``), fitted too: a real log keeps its most frequent values for
the whole stream while its tail turns over. The generator renews the id holding popularity rank r
every ``lifetime x rows x (1 + r / DRIFT_KNEE)^-exponent`` rows (a new id takes the rank, at a phase
of the rank's own). :func:`fit_drift` picks each feature's lifetime and exponent so that the
stream's first and last thirds differ as the real sample's do (it is in time order and covers the
whole log): how much of the last third its first third's top value and top 100 still hold, and how
much of the last third's mass are values the first third never showed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cafe_dist.errors import BadInputError

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
QUANTILES = np.linspace(0.0, 1.0, 101)
EMPIRICAL_MAX = 1024  # features up to this cardinality keep the sample's own value shares
DRIFT_KNEE = 1000  # ranks past it turn over faster: lifetime x (1 + rank / knee)^-exponent
# the fit's grid: a top id's lifetime in streams (None: never renewed), and how fast it falls with rank
DRIFT_LIFETIMES: tuple[float | None, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0, None)
DRIFT_EXPONENTS = (0.5, 1.0, 1.5)
DRIFT_REPEATS = 4  # phases drawn per grid point: the statistics of one draw are noisy for the top id
# MLPerf's CriteoTB (days 0-23, ids capped at 40 M per feature), C1..C26
CRITEO_TB_CARDINALITIES = [
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10, 2208, 11938,
    155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36,
]  # fmt: skip


@dataclass(frozen=True)
class CategoricalProfile:
    name: str
    cardinality: int
    missing_rate: float
    a: float  # Zipf-Mandelbrot exponent
    q: float  # Zipf-Mandelbrot shift (>= 0; at least what keeps the body's first rank below the top value)
    observed: dict = field(default_factory=dict)  # the real sample's statistics the fit matched
    # small features (cardinality <= EMPIRICAL_MAX): the sample's own value shares, most frequent
    # first, drawn instead of the law (which cannot leave half of 24 values unseen, as C6 does)
    empirical: list[float] | None = None
    # the fitted drift: {"lifetime": streams or None, "exponent", "observed": the real thirds'
    # statistics, "fitted": the generator's}; None: small features (they keep their values), or a
    # profile fitted before drift was (the generator then uses SynthSpec.drift_period's rule)
    drift: dict | None = None

    @property
    def top(self) -> float:
        return float(self.observed["top_share"])

    def sample_ranks(self, u: np.ndarray) -> np.ndarray:
        """Ranks (0 = most frequent) for uniforms ``u``: rank 0 with the top value's share, else the
        body's law over ranks 1..cardinality-1 (or the sample's own shares for small features)."""
        if self.empirical is not None:
            cdf = np.cumsum(self.empirical)
            return np.minimum(np.searchsorted(cdf / cdf[-1], u, side="right"), len(cdf) - 1).astype(np.int64)
        body = 1 + sample_ranks(np.clip((u - self.top) / (1 - self.top), 0.0, 1.0), self.cardinality - 1,
                                self.a, self.q)
        return np.where(u < self.top, 0, body)

    def rank_probabilities(self, n: int | None = None) -> np.ndarray:
        """P(rank k) for every rank (``n``: the first ``n`` ranks only): what a perfect hot set would
        pick from."""
        n = self.cardinality if n is None else min(n, self.cardinality)
        if self.empirical is not None:
            p = np.asarray(self.empirical, dtype=np.float64)
            return (p / p.sum())[:n]
        body = np.diff(rank_cdf(np.arange(n, dtype=np.float64), self.cardinality - 1, self.a, self.q))
        return np.concatenate([[self.top], (1 - self.top) * body])[:n]


@dataclass(frozen=True)
class DenseProfile:
    name: str
    missing_rate: float
    quantiles: list[float]  # of log(1 + max(x, 0)) over present values, at QUANTILES


@dataclass(frozen=True)
class Profile:
    name: str
    source: str
    rows: int  # rows of the real sample the fit used
    click_rate: float
    categorical: list[CategoricalProfile]
    dense: list[DenseProfile]

    def with_cardinalities(self, name: str, cardinalities: list[int]) -> Profile:
        """The same value laws, missing rates, dense features and click rate over other id spaces
        (e.g. CriteoTB's for planning and scale checks: its laws are not fitted, Kaggle's are reused)."""
        cats = [CategoricalProfile(c.name, card, c.missing_rate, c.a, c.q, c.observed,
                                   c.empirical if card <= EMPIRICAL_MAX and c.empirical is not None
                                   and len(c.empirical) <= card else None, c.drift)
                for c, card in zip(self.categorical, cardinalities)]
        return Profile(name, f"{self.source}, cardinalities replaced", self.rows, self.click_rate, cats, self.dense)

    def top_lookups(self, features: list[str], n: int) -> np.ndarray:
        """Expected lookups per row of the ``n`` most frequent (feature, value) pairs of ``features``,
        most frequent first (a feature's missing value is one of its values): the traffic of a perfect
        hot set of ``n`` slots, slot by slot. Each feature's ranks are in falling order, so only its
        first ``n`` are read (CriteoTB's 40 M-value features cost nothing more)."""
        by_name = {c.name: c for c in self.categorical}
        if missing := [f for f in features if f not in by_name]:
            raise ValueError(f"profile {self.name} has no feature(s) {', '.join(missing)}")
        top = top_shares([by_name[f].rank_probabilities(n) for f in features],
                         [by_name[f].missing_rate for f in features], n)
        return np.sort(top)[::-1]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, name_or_path: str | Path) -> Profile:
        """A shipped profile by name (``criteo-kaggle``, ``criteo-tb``) or a JSON file written by
        :meth:`save`."""
        if str(name_or_path) == "criteo-tb":
            return cls.load("criteo-kaggle").with_cardinalities("criteo-tb", CRITEO_TB_CARDINALITIES)
        path = Path(name_or_path)
        if not path.is_file():
            path = PROFILE_DIR / f"{str(name_or_path).replace('-', '_')}.json"
        if not path.is_file():
            shipped = sorted(p.stem.replace("_", "-") for p in PROFILE_DIR.glob("*.json"))
            raise FileNotFoundError(f"no profile {name_or_path!r}; shipped profiles: {', '.join(shipped)}, "
                                    "or give a JSON file written by `cafe-dist data fit-profile`")
        try:
            raw = json.loads(path.read_text())
            return cls(name=raw["name"], source=raw["source"], rows=raw["rows"], click_rate=raw["click_rate"],
                       categorical=[CategoricalProfile(**c) for c in raw["categorical"]],
                       dense=[DenseProfile(**d) for d in raw["dense"]])
        except (ValueError, KeyError, TypeError) as e:  # JSON, but not a profile (or not JSON at all)
            raise BadInputError(f"{path} is not a generator profile ({type(e).__name__}: {e}); give criteo-kaggle, "
                                "criteo-tb, or a JSON file written by `cafe-dist data fit-profile`") from None


def top_shares(probabilities: list[np.ndarray], missing: list[float], n: int) -> np.ndarray:
    """The ``n`` largest expected lookups per row among the values of some features, in no order:
    each feature's rank probabilities scaled by its present share, and its missing value, one more
    value of it (what a perfect hot set of ``n`` slots serves)."""
    p = np.concatenate([np.append(probs * (1 - m), m) for probs, m in zip(probabilities, missing)])
    return p if n >= len(p) else np.partition(p, len(p) - n)[len(p) - n:]


# ---- the law ----------------------------------------------------------------------------------
def _edge(x: np.ndarray | float, a: float, q: float) -> np.ndarray:
    """(x + 1 + q)^(1 - a), or log(x + 1 + q) at a = 1: the CDF's building block."""
    y = np.asarray(x, dtype=np.float64) + 1.0 + q
    return np.log(y) if abs(a - 1.0) < 1e-9 else y ** (1.0 - a)


def rank_cdf(k: np.ndarray | float, card: int, a: float, q: float) -> np.ndarray:
    """P(rank < k) for k in [0, card] under the continuous law the sampler inverts."""
    lo, hi = _edge(0.0, a, q), _edge(float(card), a, q)
    return (_edge(k, a, q) - lo) / (hi - lo)


def sample_ranks(u: np.ndarray, card: int, a: float, q: float) -> np.ndarray:
    """Ranks (0 = most frequent) for uniforms ``u``: the inverse of :func:`rank_cdf`, floored."""
    lo, hi = _edge(0.0, a, q), _edge(float(card), a, q)
    e = lo + u * (hi - lo)
    x = (np.exp(e) if abs(a - 1.0) < 1e-9 else e ** (1.0 / (1.0 - a))) - 1.0 - q
    return np.clip(np.floor(x).astype(np.int64), 0, card - 1)


def _bins(card: int, exact: int = 2048, growth: float = 1.01) -> np.ndarray:
    """Rank-bin edges: every rank alone up to ``exact``, then geometric (the law is smooth there)."""
    head = np.arange(min(exact, card) + 1, dtype=np.float64)
    if card <= exact:
        return head
    n = int(math.ceil(math.log(card / exact) / math.log(growth)))
    tail = np.unique(np.floor(exact * growth ** np.arange(1, n + 1)))
    return np.concatenate([head, tail[(tail > exact) & (tail < card)], [float(card)]])


def expected_distinct(n: int, card: int, a: float, q: float) -> float:
    """E[distinct ranks in n draws] = Σ_k 1 - (1 - p_k)^n, over rank bins (p constant within one)."""
    edges = _bins(card)
    mass = np.diff(rank_cdf(edges, card, a, q))
    width = np.diff(edges)
    p = np.clip(mass / width, 0.0, 1.0)
    return float((width * -np.expm1(n * np.log1p(-np.minimum(p, 1 - 1e-15)))).sum())


def expected_slope(n: int, card: int, a: float, q: float, top: float, max_rank: int = 1000) -> float:
    """The log-log rank/count slope :func:`loglog_slope` would measure on n draws: over the expected
    counts n·p of the top value and the body's ranks, those of at least 2, up to ``max_rank``."""
    k = np.arange(min(card - 1, max_rank - 1) + 1, dtype=np.float64)
    body = n * (1 - top) * np.diff(rank_cdf(k, card - 1, a, q))
    counts = np.sort(np.concatenate([[n * top], body]))[::-1]
    counts = counts[counts >= 2][:max_rank]
    if len(counts) < 3:
        return float("nan")
    return float(np.polyfit(np.log(np.arange(1, len(counts) + 1)), np.log(counts), 1)[0])


def _least_shift(card: int, a: float, top: float) -> float:
    """log(1 + q) below which the body's first rank would take more rows than the top value (which
    would then not be the top value): the body's rank-1 share falls as q grows."""
    limit = top / max(1 - top, 1e-12)
    lo, hi = 0.0, math.log(1e7)
    if float(rank_cdf(1.0, card - 1, a, 0.0)) <= limit:
        return 0.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(rank_cdf(1.0, card - 1, a, math.exp(mid) - 1)) > limit else (lo, mid)
    return hi


def _q_for_slope(n: int, card: int, a: float, top: float, slope: float) -> float:
    """The body's shift that gives the measured slope (a larger q flattens the head)."""
    lo, hi = _least_shift(card, a, top), math.log(1e7)  # log(1 + q)
    for _ in range(40):
        mid = (lo + hi) / 2
        got = expected_slope(n, card, a, math.exp(mid) - 1, top)
        lo, hi = (mid, hi) if not got > slope else (lo, mid)  # steeper than wanted: more shift
    return math.exp((lo + hi) / 2) - 1


def fit_law(card: int, n: int, distinct: int, top: float, slope: float) -> tuple[float, float]:
    """(a, q) of the body (ranks 1..card-1; rank 0 has share ``top``) such that n draws meet
    ``distinct`` values and show ``slope`` on a log-log rank/count plot, in expectation. For each a
    the shift q sets the slope; a larger a then means fewer distinct values: bisect on a."""
    if card <= 2 or not math.isfinite(slope):
        return 1.0, 0.0
    lo, hi = 0.05, 30.0
    for _ in range(40):
        mid = (lo + hi) / 2
        q = _q_for_slope(n, card, mid, top, slope)
        if 1 + expected_distinct(int(n * (1 - top)), card - 1, mid, q) > distinct:
            lo = mid
        else:
            hi = mid
    a = (lo + hi) / 2
    return a, _q_for_slope(n, card, a, top, slope)


# ---- fitting from a real sample ----------------------------------------------------------------
def loglog_slope(counts: np.ndarray, max_rank: int = 1000) -> float:
    """Slope of log(count) against log(rank) over the values seen at least twice (up to max_rank):
    the usual measure of a feature's skew (about -1 for Zipf's law)."""
    c = np.sort(counts)[::-1]
    c = c[(c >= 2)][:max_rank]
    if len(c) < 3:
        return float("nan")
    return float(np.polyfit(np.log(np.arange(1, len(c) + 1)), np.log(c), 1)[0])


def value_counts(values: np.ndarray, missing_id: int) -> np.ndarray:
    """How often each present value of one feature occurs, most frequent first."""
    _, counts = np.unique(values[values != missing_id], return_counts=True)
    return np.sort(counts)[::-1]


def categorical_stats(values: np.ndarray, missing_id: int, counts: np.ndarray | None = None) -> dict:
    """What the fit matches and the tests compare, for one feature's raw values (``counts``: their
    :func:`value_counts`, when already known)."""
    counts = value_counts(values, missing_id) if counts is None else counts
    present = int(counts.sum())
    return {"rows": int(len(values)), "present": present, "distinct": int(len(counts)),
            "top_share": float(counts.max() / present) if present else 0.0,
            "singleton_share": float((counts == 1).sum() / len(counts)) if len(counts) else 0.0,
            "loglog_slope": loglog_slope(counts), "missing_rate": float(1 - present / len(values))}


# ---- drift ------------------------------------------------------------------------------------
def lifetimes(ranks: np.ndarray, top_rows: float, exponent: float) -> np.ndarray:
    """Rows the id holding each rank keeps it (at least 1)."""
    return np.maximum(1, np.round(top_rows * (1.0 + ranks / DRIFT_KNEE) ** -exponent)).astype(np.int64)


def renewals(ranks: np.ndarray, rows: np.ndarray, life: np.ndarray, salt: int) -> np.ndarray:
    """How many times rank ``ranks[i]``'s id was renewed by row ``rows[i]`` (each rank at a phase of
    its own, so renewals spread over the stream)."""
    from cafe_dist.data.distinct import mix64

    phase = (mix64(ranks.astype(np.uint64) ^ np.uint64(salt)) % life.astype(np.uint64)).astype(np.int64)
    return (rows + phase) // life


def drift_stats(values: np.ndarray) -> dict[str, float]:
    """How a feature's present values (in time order) change from the first third to the last:
    the share of the last third's top-value mass its first third's top value still holds
    (``top1_kept``), the same for the top 100 (``top100_kept``), and the share of the last third's
    rows whose value the first third never showed (``new_mass``); and the top value's share of the
    whole stream (``top_share``: a renewed top value splits it)."""
    k = len(values) // 3
    if k == 0:
        return {"top1_kept": 1.0, "top100_kept": 1.0, "new_mass": 0.0, "top_share": 1.0}
    first, last = values[:k], values[-k:]
    u1, c1 = np.unique(first, return_counts=True)
    _, c3 = np.unique(last, return_counts=True)
    order = np.argsort(-c1, kind="stable")
    out = {}
    for n, key in ((1, "top1_kept"), (100, "top100_kept")):
        held = np.isin(last, u1[order[:n]]).sum()
        out[key] = float(held / max(np.sort(c3)[-n:].sum(), 1))
    out["new_mass"] = float((~np.isin(last, u1)).mean())
    out["top_share"] = float(np.unique(values, return_counts=True)[1].max() / len(values))  # over the whole stream
    return out


def fit_drift(values: np.ndarray, missing_id: int, profile: CategoricalProfile, seed: int = 0) -> dict | None:
    """The lifetime and exponent (of the grid) whose stream's thirds differ most like the real
    sample's (``values``: one feature's raw values in time order); None for small features."""
    if profile.empirical is not None:
        return None
    rows = np.flatnonzero(values != missing_id)
    real = drift_stats(values[rows])
    rng = np.random.default_rng([seed, 1 << 33])
    draws = [(profile.sample_ranks(rng.random(len(rows))), int(rng.integers(1, 1 << 62))) for _ in range(DRIFT_REPEATS)]
    best, best_loss = None, math.inf
    for lifetime in DRIFT_LIFETIMES:
        for exponent in DRIFT_EXPONENTS if lifetime is not None else (0.0,):
            got = {k: 0.0 for k in real}
            for ranks, salt in draws:
                ids = ranks if lifetime is None else ranks + profile.cardinality * renewals(
                    ranks, rows, lifetimes(ranks, lifetime * len(values), exponent), salt)
                for k, v in drift_stats(ids).items():
                    got[k] += v / DRIFT_REPEATS
            # top1_kept is reported, not fitted: where two values share the top (C13), they trade
            # places between thirds without any renewal; the top value's share says what matters
            loss = ((got["top100_kept"] - real["top100_kept"]) ** 2 + (got["new_mass"] - real["new_mass"]) ** 2
                    + ((got["top_share"] - real["top_share"]) / max(real["top_share"], 1e-3)) ** 2)
            if loss < best_loss - 1e-12:
                best_loss, best = loss, {"lifetime": lifetime, "exponent": exponent, "observed": real, "fitted": got}
    return best


def fit_profile(data_dir: str | Path, cardinalities: list[int], name: str, source: str) -> Profile:
    """Fit a profile from a converted dataset (every split, in time order: the drift is fitted on
    how its thirds differ) with the given full cardinality per categorical feature."""
    import pyarrow.dataset as pads

    from cafe_dist.data.schema import DatasetMeta

    meta = DatasetMeta.load(data_dir)
    table = pads.dataset([pads.dataset(str(Path(data_dir, s)), format="parquet") for s in ("train", "test")]
                         ).to_table()
    categorical = []
    for f, card in zip(meta.sparse_features, cardinalities):
        values = table.column(f).to_numpy()
        counts = value_counts(values, meta.missing_id)
        st = categorical_stats(values, meta.missing_id, counts)
        card = max(card, st["distinct"])
        a, q = fit_law(card, st["present"], st["distinct"], st["top_share"], st["loglog_slope"])
        empirical = [float(c) for c in counts / counts.sum()] if card <= EMPIRICAL_MAX else None
        law = CategoricalProfile(f, card, st["missing_rate"], a, q, st, empirical)
        categorical.append(CategoricalProfile(f, card, st["missing_rate"], a, q, st, empirical,
                                              fit_drift(values, meta.missing_id, law)))
    dense = []
    for f in meta.dense_features:
        x = table.column(f).to_numpy()
        # the converter stores log(1 + x) and 0 for missing (and for x <= 0): the zeros' share is
        # both; the generator draws them from the quantiles, so "missing" here means exactly zero
        dense.append(DenseProfile(f, float((x == 0).mean()),
                                  [float(v) for v in np.quantile(x[x != 0], QUANTILES)] if (x != 0).any()
                                  else [0.0] * len(QUANTILES)))
    labels = table.column("label").to_numpy()
    return Profile(name, source, int(table.num_rows), float(labels.mean()), categorical, dense)
