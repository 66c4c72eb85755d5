"""The shape every embedding method shares, so DMP can shard any of them.

A method rewrites the input ``KeyedJaggedTensor`` (one key per original feature) into lookups on
ordinary ``EmbeddingBagConfig`` tables held by one ``EmbeddingBagCollection``; DMP shards that EBC
with the fbgemm kernels and fused optimizers like any other. ``combine`` turns the pooled lookups
back into one (B, F, D) tensor for the interaction layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, KeyedTensor

FLOAT_BYTES = 4


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    cardinality: int  # rows an uncompressed table needs (train vocabulary + 1)


class CompressedEmbedding(nn.Module):
    """Base class: subclasses define ``tables``, ``transform`` and ``combine``."""

    #: which input column a method consumes: contiguous vocabulary ids ("idx") or raw values ("raw")
    input_kind: str = "idx"

    def __init__(self, features: list[FeatureSpec], dim: int, tables: list[EmbeddingBagConfig],
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.features = list(features)
        self.dim = dim
        self.tables = list(tables)
        self.ebc = EmbeddingBagCollection(tables=self.tables, device=device or torch.device("meta"))

    def transform(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        return kjt

    def combine(self, pooled: KeyedTensor, batch_size: int) -> torch.Tensor:
        return pooled.values().view(batch_size, len(self.features), self.dim)

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        batch_size = kjt.stride()
        return self.combine(self.ebc(self.transform(kjt)), batch_size)

    # ---- memory accounting --------------------------------------------------------------------
    def table_bytes(self) -> int:
        return sum(t.num_embeddings * t.embedding_dim * FLOAT_BYTES for t in self.tables)

    def aux_bytes(self) -> int:
        """Bytes of everything beside the storage tables (sketches, id maps, per-id scalars)."""
        return 0

    def embedding_bytes(self) -> int:
        return self.table_bytes() + self.aux_bytes()

    def full_embedding_bytes(self) -> int:
        return sum(f.cardinality * self.dim * FLOAT_BYTES for f in self.features)


class FullEmbedding(CompressedEmbedding):
    """Uncompressed: one table per feature, sized exactly by the train vocabulary."""

    def __init__(self, features: list[FeatureSpec], dim: int, device: torch.device | None = None) -> None:
        tables = [
            EmbeddingBagConfig(name=f"t_{f.name}", embedding_dim=dim, num_embeddings=f.cardinality,
                               feature_names=[f.name])
            for f in features
        ]
        super().__init__(features, dim, tables, device)


_INPUT_KIND = {"full": "idx"}


def input_kind(method: str) -> str:
    """Which id column (``idx`` or ``raw``) a method reads; the driver selects only that column."""
    return _INPUT_KIND[method]


def build_embedding(method: str, features: list[FeatureSpec], dim: int, compression_ratio: float,
                    device: torch.device | None = None) -> CompressedEmbedding:
    if method == "full":
        return FullEmbedding(features, dim, device)
    raise ValueError(f"unknown embedding method {method!r}")
