"""Quotient-remainder trick (Shi et al., KDD 2020): id → (id // m, id % m), two small tables whose
rows are combined by elementwise product (``mult``) or sum (``add``). Complementary partitions
make the pair unique for every id of the space they cover. Ids are raw values, so they are first
hashed into the largest id space a pair of tables of the budget's rows covers: m = q = rows / 2,
m·q ids (collisions fall on raw values, as in every hashed method)."""

from __future__ import annotations

from typing import Literal

import torch
from torchrec import EmbeddingBagConfig

from cafe_dist.embeddings.base import CompressedEmbedding, MethodOptions
from cafe_dist.embeddings.hashing import hash_mod
from cafe_dist.embeddings.routing import Route, Values
from cafe_dist.embeddings.spec import FLOAT_BYTES
from cafe_dist.embeddings.tables import table


def qr_shape(rows: int) -> tuple[int, int, int]:
    """(id space after hashing, remainder rows m, quotient rows q) with m + q = rows and the
    largest space m·q (the pair of rows is unique for every id of it)."""
    rows = max(rows, 2)
    m = rows // 2
    q = rows - m
    return m * q, m, q


class QROptions(MethodOptions):
    combine: Literal["mult", "add"] = "mult"  # how the quotient and remainder rows combine


class QREmbedding(CompressedEmbedding):
    options = QROptions

    def __init__(self, *args, combine: str = "mult", **kwargs) -> None:
        if combine not in ("mult", "add"):
            raise ValueError(f"qr.combine must be 'mult' or 'add', got {combine!r}")
        self.op = combine
        super().__init__(*args, **kwargs)

    def method_tables(self) -> list[EmbeddingBagConfig]:
        row = self.dim * FLOAT_BYTES

        def fit(f, avail):
            shape = qr_shape(self.rows_for(avail))
            return shape, (shape[1] + shape[2]) * row

        self.shape = self.allocate(fit)
        out = []
        for n, (_, m, q) in self.shape.items():
            out += [table(f"q_{n}", q, self.dim, [n]), table(f"r_{n}", m, self.dim, [n + "@r"])]
        return out

    def routes(self, v: Values) -> list[Route]:
        space = [self.shape[f.name][0] if f.name in self.shape else 0 for f in self.features]
        m = [self.shape[f.name][1] if f.name in self.shape else 1 for f in self.features]
        space_v, m_v = self.per_value(space, v), self.per_value(m, v)
        x = hash_mod(v.ids, space_v.clamp(min=1))
        full = self.is_full[v.feature]
        quotient = torch.where(full, v.ids, torch.div(x, m_v, rounding_mode="floor"))
        return [Route("", torch.ones_like(self.is_full), quotient),
                Route("@r", ~self.is_full, x % m_v)]

    def route_dims(self) -> dict[str, int]:
        return {"": self.dim, "@r": self.dim}

    def merge(self, groups: dict[str, torch.Tensor], v: Values, routes: list[Route]) -> torch.Tensor:
        q, r = groups[""], groups["@r"]
        if self.op == "add":
            return q + r  # r is zero for uncompressed features
        return torch.where(self.is_full.view(1, -1, 1), q, q * r)
