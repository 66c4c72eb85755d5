"""MEmCom (Pansare et al., MLSys 2022): a shared hash row times a trainable per-id scalar.

The scalars live in a plain table of width 4 holding four ids' scalars per row (fbgemm needs widths
that are multiples of 4), so they are sharded and trained by the fused optimizer like any table;
``merge`` picks each id's column. When per-id scalars would take more than half of a feature's
budget, the scalars are themselves hashed into a table that does fit. Ids are raw values, so the
scalars are always reached through a hash (a second one, independent of the row's).
"""

from __future__ import annotations

import torch
from torchrec import EmbeddingBagConfig

from cafe_dist.embeddings.base import CompressedEmbedding
from cafe_dist.embeddings.hashing import hash_mod
from cafe_dist.embeddings.routing import Route, Values
from cafe_dist.embeddings.spec import FLOAT_BYTES
from cafe_dist.embeddings.tables import table

SCALARS_PER_ROW = 4


class MEmComEmbedding(CompressedEmbedding):
    def method_tables(self) -> list[EmbeddingBagConfig]:
        row = self.dim * FLOAT_BYTES

        def fit(f, avail):
            slots = min(f.cardinality, int(avail / 2 // FLOAT_BYTES))
            slots = max(SCALARS_PER_ROW, slots - slots % SCALARS_PER_ROW)
            rows = self.rows_for(avail - slots * FLOAT_BYTES)
            return (slots, rows), slots * FLOAT_BYTES + rows * row

        shapes = self.allocate(fit)
        self.scalar_slots = {n: s for n, (s, _) in shapes.items()}
        self.hash_rows = {n: r for n, (_, r) in shapes.items()}
        out = []
        for n, (slots, rows) in shapes.items():
            out += [table(f"hash_{n}", rows, self.dim, [n]),
                    table(f"scale_{n}", slots // SCALARS_PER_ROW, SCALARS_PER_ROW, [n + "@s"])]
        return out

    def routes(self, v: Values) -> list[Route]:
        if v.lengths[~self.is_full].ne(1).any():
            raise ValueError("memcom needs exactly one id per compressed feature per row")
        rows = self.per_value([self.hash_rows.get(f.name, 1) for f in self.features], v)
        slots = self.per_value([self.scalar_slots.get(f.name, 1) for f in self.features], v)
        full = self.is_full[v.feature]
        slot = hash_mod(v.ids, slots, seed=1)
        self._column = (slot % SCALARS_PER_ROW)  # read back by merge for the same batch
        return [Route("", torch.ones_like(self.is_full), torch.where(full, v.ids, hash_mod(v.ids, rows))),
                Route("@s", ~self.is_full, torch.div(slot, SCALARS_PER_ROW, rounding_mode="floor"))]

    def route_dims(self) -> dict[str, int]:
        return {"": self.dim, "@s": SCALARS_PER_ROW}

    def merge(self, groups: dict[str, torch.Tensor], v: Values, routes: list[Route]) -> torch.Tensor:
        b, nf = v.batch_size, len(self.names)
        col = torch.zeros(nf * b, dtype=torch.int64, device=v.ids.device)
        col[v.segment] = self._column  # one value per compressed bag (checked in routes)
        scale = groups["@s"].gather(2, col.view(nf, b).t().unsqueeze(2)).squeeze(2)  # (B, F)
        scale = torch.where(self.is_full.view(1, -1), torch.ones_like(scale), scale)
        return groups[""] * scale.unsqueeze(2)
