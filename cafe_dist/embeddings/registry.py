"""``embedding.method`` → the module that implements it."""

from __future__ import annotations

from typing import Any

import torch

from cafe_dist.embeddings.base import CompressedEmbedding, FullEmbedding
from cafe_dist.embeddings.bh import BHEmbedding
from cafe_dist.embeddings.cafe import CafeEmbedding, CafeMLEmbedding, CafeParams
from cafe_dist.embeddings.hash import HashEmbedding
from cafe_dist.embeddings.mch import MCHEmbedding
from cafe_dist.embeddings.memcom import MEmComEmbedding
from cafe_dist.embeddings.qr import QREmbedding
from cafe_dist.embeddings.robe import ROBEEmbedding
from cafe_dist.embeddings.spec import FeatureSpec

REGISTRY: dict[str, type[CompressedEmbedding]] = {
    "full": FullEmbedding, "hash": HashEmbedding, "qr": QREmbedding, "memcom": MEmComEmbedding,
    "bh": BHEmbedding, "robe": ROBEEmbedding, "mch": MCHEmbedding, "cafe": CafeEmbedding,
    "cafe_ml": CafeMLEmbedding,
}


def input_kind(method: str) -> str:
    """Which id column (``idx`` or ``raw``) a method reads; the driver selects only that column."""
    return REGISTRY[method].input_kind


def build_embedding(method: str, features: list[FeatureSpec], dim: int, compression_ratio: float,
                    device: torch.device | None = None, options: dict[str, Any] | None = None
                    ) -> CompressedEmbedding:
    """``options``: the method's own settings (``cafe``: CafeParams fields; ``qr``: combine;
    ``robe``: z; ``mch``: eviction_interval)."""
    if method not in REGISTRY:
        raise ValueError(f"unknown embedding method {method!r}; choose one of {', '.join(REGISTRY)}")
    opts = dict(options or {})
    if method in ("cafe", "cafe_ml"):
        emb = REGISTRY[method](features, dim, compression_ratio, device, params=CafeParams(**opts))
    else:
        emb = REGISTRY[method](features, dim, compression_ratio, device, **opts)
    achieved = emb.full_embedding_bytes() / emb.embedding_bytes()
    if method != "full" and achieved < compression_ratio * (1 - RATIO_TOLERANCE):  # full ignores the ratio
        raise ValueError(
            f"embedding.compression_ratio={compression_ratio:g} cannot be met by method {method!r} on these "
            f"{len(features)} features (dim {dim}): its smallest form (one row per table, plus its fixed "
            f"state) is {achieved:,.1f}x. Use a ratio of at most {achieved:,.0f}, or a method that goes lower "
            "(robe shares one array across all features).")
    return emb


RATIO_TOLERANCE = 0.05  # achieved ratios land within 0.5 % (tested); 5 % below means it cannot be met
