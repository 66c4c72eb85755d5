"""Embedding methods: each is an id transform + plain TorchRec tables + a combine step."""

from cafe_dist.embeddings.base import CompressedEmbedding, FeatureSpec, build_embedding, input_kind

__all__ = ["CompressedEmbedding", "FeatureSpec", "build_embedding", "input_kind"]
