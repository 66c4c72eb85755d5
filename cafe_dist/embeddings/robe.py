"""ROBE-Z (Desai et al., MLSys 2022): every compressed feature reads its embedding from one shared
array, as D/Z blocks of Z consecutive values at hashed block-aligned offsets.

The array is a plain table of width Z (rows = budget / (4·Z)) shared by all block keys, so DMP
shards it like any table (fbgemm needs Z to be a multiple of 4). Aligning blocks to Z is what lets
the lookup be a table row; the paper also allows unaligned offsets, which no fbgemm kernel reads.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torchrec import EmbeddingBagConfig

from cafe_dist.embeddings.base import CompressedEmbedding, MethodOptions
from cafe_dist.embeddings.hashing import hash_mod
from cafe_dist.embeddings.routing import BLOCKS, Route, Values
from cafe_dist.embeddings.tables import table


class ROBEOptions(MethodOptions):
    z: int = Field(4, gt=0, multiple_of=4)  # block size; must divide embedding.dim


class ROBEEmbedding(CompressedEmbedding):
    options = ROBEOptions
    array_name: ClassVar[str] = "robe"  # the shared array's table name

    def __init__(self, *args, z: int = 4, **kwargs) -> None:
        self.z = z
        super().__init__(*args, **kwargs)

    def method_tables(self) -> list[EmbeddingBagConfig]:
        if self.z % 4 or self.dim % self.z:
            raise ValueError(f"robe.z must be a multiple of 4 dividing embedding.dim={self.dim}, got {self.z}")
        self.nblocks = self.dim // self.z
        if not self.compressed:
            self.array_rows = 0
            return []
        self.array_rows = self.rows_for(self.array_bytes(), self.z)
        keys = [f"{f.name}@z{j}" for f in self.compressed for j in range(self.nblocks)]
        return [table(self.array_name, self.array_rows, self.z, keys)]

    def array_bytes(self) -> float:
        """Bytes the shared array may take: the whole compressed budget here."""
        return self.budget.compressed_bytes

    def block_rows(self, v: Values) -> list[torch.Tensor]:
        """Array row of each value's block j, for every j: a hash of (id, feature, j)."""
        key = v.ids * len(self.names) + v.feature  # each feature hashes into the array differently
        return [hash_mod(key, self.array_rows, seed=j) for j in range(self.nblocks)]

    def routes(self, v: Values) -> list[Route]:
        routes = [Route("", self.is_full, v.ids)]
        if not self.compressed:
            return routes
        at = (~self.is_full).index_select(0, v.feature).nonzero().squeeze(1)  # hashed for these alone
        on = ~self.is_full
        return routes + [Route(s, on, rows, at=at) for s, rows in zip(self.block_suffixes(), self.block_rows(v.take(at)))]

    def route_dims(self) -> dict[str, int]:
        if not self.compressed:
            return {"": self.dim}
        return {"": self.dim, **dict.fromkeys(self.block_suffixes(), self.z)}

    def block_suffixes(self) -> tuple[str, ...]:
        return tuple(f"@z{j}" for j in range(self.nblocks)) if self.compressed else ()

    def merge(self, groups: dict[str, torch.Tensor], v: Values, routes: list[Route]) -> torch.Tensor:
        if not self.compressed:
            return groups[""]
        return groups[""].index_add(1, self.compressed_index, groups[BLOCKS])  # a feature is on one of the two
