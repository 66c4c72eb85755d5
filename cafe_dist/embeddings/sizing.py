"""Memory budget: which features stay uncompressed and how many bytes each compressed one gets.

The budget is ``full_bytes / compression_ratio``. It is shared max-min fairly (water-filling, the
same rule as DLRM's ``--max-ind-range`` cap): every compressed feature gets the same number of bytes,
and a feature whose full table costs less than that share stays uncompressed, as in the CAFE paper.
Only a feature whose values are listed can stay uncompressed (its list maps raw values to rows),
and its list is paid from the budget: ``VALUE_BYTES`` a value beside its table. A ratio of 1 or
less keeps every listed feature uncompressed.
Methods turn a feature's bytes into rows; whatever a method cannot use within a feature (rounding)
is at most one row, so the achieved ratio stays within a fraction of a percent of the request.
"""

from __future__ import annotations

from dataclasses import dataclass

from cafe_dist.embeddings.spec import FLOAT_BYTES, VALUE_BYTES, FeatureSpec


@dataclass(frozen=True)
class Budget:
    total_bytes: float  # full_bytes / ratio
    full: tuple[str, ...]  # features kept uncompressed
    compressed: tuple[str, ...]  # features that share the rest
    per_feature_bytes: float  # bytes each compressed feature may use

    @property
    def compressed_bytes(self) -> float:
        return self.per_feature_bytes * len(self.compressed)


def full_bytes(feature: FeatureSpec, dim: int) -> int:
    return feature.cardinality * dim * FLOAT_BYTES


def kept_bytes(feature: FeatureSpec, dim: int) -> int:
    """What keeping ``feature`` uncompressed costs: its table and its list of values."""
    return full_bytes(feature, dim) + (feature.cardinality - 1) * VALUE_BYTES


def plan_budget(features: list[FeatureSpec], dim: int, ratio: float) -> Budget:
    total = sum(full_bytes(f, dim) for f in features) / ratio
    ordered = sorted((f for f in features if f.listed), key=lambda f: f.cardinality)
    remaining, full = total, []
    for f in ordered:
        share = remaining / (len(features) - len(full))
        if ratio > 1 and kept_bytes(f, dim) > share:
            break
        full.append(f.name)
        remaining -= kept_bytes(f, dim)
    compressed = [f.name for f in features if f.name not in full]
    per = remaining / len(compressed) if compressed else 0.0
    keep = set(full)
    return Budget(total, tuple(f.name for f in features if f.name in keep), tuple(compressed), per)
