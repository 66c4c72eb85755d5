"""``embedding.method`` → the module that implements it: one line per method.

A method declares everything else about itself on its class (:class:`CompressedEmbedding`): its
settings section, whether it needs the coordinator, its level statistics and plots. Config,
launcher, trainer, tracking and benchmarks ask this registry; none of them names a method.
Adding a method is one file (its module) plus one line below, or :func:`register` from your own
code (the class then travels to Ray workers by value).
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from cafe_dist.embeddings.base import CompressedEmbedding, FullEmbedding, MethodOptions
from cafe_dist.embeddings.bh import BHEmbedding
from cafe_dist.embeddings.cafe import CafeEmbedding, CafeMLEmbedding
from cafe_dist.embeddings.hash import HashEmbedding
from cafe_dist.embeddings.lma import LMAEmbedding
from cafe_dist.embeddings.mch import MCHEmbedding
from cafe_dist.embeddings.memcom import MEmComEmbedding
from cafe_dist.embeddings.qr import QREmbedding
from cafe_dist.embeddings.robe import ROBEEmbedding
from cafe_dist.embeddings.spec import FeatureSpec

REGISTRY: dict[str, type[CompressedEmbedding]] = {
    "full": FullEmbedding,
    "hash": HashEmbedding,
    "qr": QREmbedding,
    "memcom": MEmComEmbedding,
    "bh": BHEmbedding,
    "robe": ROBEEmbedding,
    "mch": MCHEmbedding,
    "lma": LMAEmbedding,
    "cafe": CafeEmbedding,
    "cafe_ml": CafeMLEmbedding,
}
BASELINE = "full"  # the uncompressed method every comparison is made against


def register(name: str, cls: type[CompressedEmbedding]) -> type[CompressedEmbedding]:
    """Add a method at run time. A class defined outside this package is pickled by value, so Ray
    workers can build it without importing the module it was defined in."""
    if not (isinstance(cls, type) and issubclass(cls, CompressedEmbedding)):
        raise TypeError(f"{name}: a method is a CompressedEmbedding subclass, got {cls!r}")
    REGISTRY[name] = cls
    module = sys.modules.get(cls.__module__)
    if module is not None and not cls.__module__.startswith("cafe_dist."):
        import ray.cloudpickle

        ray.cloudpickle.register_pickle_by_value(module)
    return cls


def method_class(method: str) -> type[CompressedEmbedding]:
    if method not in REGISTRY:
        raise ValueError(f"unknown embedding method {method!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[method]


def compressed_methods() -> list[str]:
    return [m for m in REGISTRY if m != BASELINE]


def section_of(method: str) -> str | None:
    """The YAML section holding ``method``'s settings (None: it has none)."""
    cls = method_class(method)
    return (cls.section or method) if cls.options is not None else None


def sections() -> dict[str, type[MethodOptions]]:
    """Every method settings section and its model (methods sharing a section share the model)."""
    return {section_of(m): cls.options for m, cls in REGISTRY.items() if cls.options is not None}


def build_embedding(method: str | type[CompressedEmbedding], features: list[FeatureSpec], dim: int,
                    compression_ratio: float, device: torch.device | None = None,
                    options: MethodOptions | dict[str, Any] | None = None) -> CompressedEmbedding:
    """``method``: a registered name, or the class itself (what a Ray worker is handed).
    ``options``: the method's settings (its options model, or a dict of its fields)."""
    cls = method if isinstance(method, type) else method_class(method)
    name = method if isinstance(method, str) else next((m for m, c in REGISTRY.items() if c is cls), cls.__name__)
    if isinstance(options, dict):
        if cls.options is None:
            if options:
                raise ValueError(f"method {name!r} has no settings, got {', '.join(options)}")
            options = None
        else:
            options = cls.options.model_validate(options)
    emb = cls.build(features, dim, compression_ratio, device, options)
    achieved = emb.full_embedding_bytes() / emb.embedding_bytes()
    # full ignores the ratio; at 1x or below every listed feature keeps its table (and its list of values)
    if name != BASELINE and compression_ratio > 1 and achieved < compression_ratio * (1 - RATIO_TOLERANCE):
        raise ValueError(
            f"embedding.compression_ratio={compression_ratio:g} cannot be met by method {name!r} on these "
            f"{len(features)} features (dim {dim}): its smallest form (one row per table, plus its fixed "
            f"state) is {achieved:,.1f}x. Use a ratio of at most {achieved:,.0f}, or a method that goes lower "
            "(robe shares one array across all features).")
    return emb


RATIO_TOLERANCE = 0.05  # achieved ratios land within 0.5 % (tested); 5 % below means it cannot be met
