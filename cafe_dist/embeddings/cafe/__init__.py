"""CAFE (Zhang et al., SIGMOD 2024): hot ids get a unique row, the rest share a cold tier.

One method in parts, one job each: :mod:`.method` (settings, sizing, id remapping, the step's
wiring), :mod:`.layout`, :mod:`.scoring`, :mod:`.client`, :mod:`.migration`. The exports load on
first use, so :mod:`.sketch`, :mod:`.hotmap` and :mod:`.scoring` import without TorchRec.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["CafeEmbedding", "CafeMLEmbedding", "CafeOptions", "hash_fraction_for"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module("cafe_dist.embeddings.cafe.method"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
