"""What an embedding method is told about each feature."""

from __future__ import annotations

from dataclasses import dataclass

FLOAT_BYTES = 4
VALUE_BYTES = 8  # one listed raw value (int64) of a feature that keeps a table of its own
VALUE_BITS = 33  # raw values are below 2**33 (32-bit values, and the missing marker 2**32)


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    cardinality: int  # rows an uncompressed table needs (distinct train values + 1)
    # whether its values are listed exactly (the dataset's values file, or full's vocabulary): only
    # such a feature can keep a table of its own, whose rows its list maps raw values to
    listed: bool = True
