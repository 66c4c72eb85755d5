"""Embedding methods: each is an id transform + plain TorchRec tables + a combine step."""

from cafe_dist.embeddings.base import CompressedEmbedding
from cafe_dist.embeddings.registry import REGISTRY, build_embedding
from cafe_dist.embeddings.spec import FeatureSpec

__all__ = ["REGISTRY", "CompressedEmbedding", "FeatureSpec", "build_embedding"]
