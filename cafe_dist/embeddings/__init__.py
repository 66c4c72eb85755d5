"""Embedding methods: each is an id transform + plain TorchRec tables + a combine step.

The exports load on first use (PEP 562), so a part that needs no TorchRec (the HotSketch, the hot
map, the hashing kernels: what ``scripts/gpu-check.sh --core`` times on a bare GPU machine) imports
without it."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {"CompressedEmbedding": "cafe_dist.embeddings.base", "REGISTRY": "cafe_dist.embeddings.registry",
            "build_embedding": "cafe_dist.embeddings.registry", "FeatureSpec": "cafe_dist.embeddings.spec"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
