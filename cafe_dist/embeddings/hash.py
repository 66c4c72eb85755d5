"""Hashing trick: each compressed feature's ids share the rows of one smaller table."""

from __future__ import annotations

import torch
from torchrec import EmbeddingBagConfig

from cafe_dist.embeddings.base import CompressedEmbedding
from cafe_dist.embeddings.hashing import hash_mod
from cafe_dist.embeddings.routing import Route, Values
from cafe_dist.embeddings.tables import table


class HashEmbedding(CompressedEmbedding):
    def method_tables(self) -> list[EmbeddingBagConfig]:
        self.hash_rows = self.allocate_rows()
        return [table(f"hash_{n}", r, self.dim, [n]) for n, r in self.hash_rows.items()]

    def row_table(self) -> list[int]:
        """Rows of each feature's main table (full tables: their cardinality)."""
        return [self.hash_rows.get(f.name, f.cardinality) for f in self.features]

    def hashed(self, v: Values, rows: list[int], seed: int = 0) -> torch.Tensor:
        """Uncompressed features keep their id; compressed ones hash into their table."""
        h = hash_mod(v.ids, self.per_value(rows, v), seed)
        return torch.where(self.is_full[v.feature], v.ids, h)

    def routes(self, v: Values) -> list[Route]:
        return [Route("", torch.ones_like(self.is_full), self.hashed(v, self.row_table()))]
