"""What an embedding method is told about each feature."""

from __future__ import annotations

from dataclasses import dataclass

FLOAT_BYTES = 4


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    cardinality: int  # rows an uncompressed table needs (train vocabulary + 1)
