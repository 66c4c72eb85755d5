"""Binary-code hash embedding (Yan et al., CIKM 2021): an id's code is cut into k blocks; block i
indexes its own small table and the k rows are summed. We use base-m digits (m = rows // k) so the
tables fill the budget exactly; with m a power of two these are BH's bit blocks. k is the fewest
blocks for which the codes of all ids can stay distinct (m^k >= cardinality); ids are raw values,
so they are hashed into the m^k codes first."""

from __future__ import annotations

import torch
from torchrec import EmbeddingBagConfig

from cafe_dist.embeddings.base import CompressedEmbedding
from cafe_dist.embeddings.hashing import hash_mod
from cafe_dist.embeddings.routing import Route, Values
from cafe_dist.embeddings.spec import FLOAT_BYTES
from cafe_dist.embeddings.tables import table

MAX_BLOCKS = 8
MAX_SPACE = 1 << 62  # codes past it are not needed (raw values are below 2**33)


def bh_shape(cardinality: int, rows: int) -> tuple[int, int]:
    """(blocks k, rows per block m) with k·m <= rows and m^k >= cardinality where possible."""
    for k in range(2, MAX_BLOCKS + 1):
        m = rows // k
        if m >= 2 and m ** k >= cardinality:
            return k, m
    if rows < 4:  # too small for two blocks of two rows: one block, i.e. plain hashing by digits
        return 1, rows
    k = min(MAX_BLOCKS, rows // 2)
    return k, rows // k


class BHEmbedding(CompressedEmbedding):
    def method_tables(self) -> list[EmbeddingBagConfig]:
        row = self.dim * FLOAT_BYTES

        def fit(f, avail):
            k, m = bh_shape(f.cardinality, self.rows_for(avail))
            return (k, m), k * m * row

        self.shape = self.allocate(fit)
        self.blocks = max((k for k, _ in self.shape.values()), default=0)
        out = []
        for n, (k, m) in self.shape.items():
            out += [table(f"bh_{n}_{i}", m, self.dim, [f"{n}@b{i}"]) for i in range(k)]
        return out

    def routes(self, v: Values) -> list[Route]:
        full = self.is_full[v.feature]
        routes = [Route("", self.is_full, v.ids)]
        m = self.per_value([self.shape.get(f.name, (1, 1))[1] for f in self.features], v)
        space = self.per_value([min(m ** k, MAX_SPACE) for k, m in
                                (self.shape.get(f.name, (1, 1)) for f in self.features)], v)
        rest = hash_mod(v.ids, space)
        for i in range(self.blocks):
            on = torch.tensor([self.shape.get(n, (0, 1))[0] > i for n in self.names], device=v.ids.device)
            routes.append(Route(f"@b{i}", on, rest % m, mask=~full))
            rest = torch.div(rest, m, rounding_mode="floor")
        return routes

    def route_dims(self) -> dict[str, int]:
        return {"": self.dim, **{f"@b{i}": self.dim for i in range(self.blocks)}}

    def merge(self, groups: dict[str, torch.Tensor], v: Values, routes: list[Route]) -> torch.Tensor:
        return sum(groups.values())  # a feature is either full (main route) or on the block routes
