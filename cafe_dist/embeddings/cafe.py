"""CAFE (Zhang et al., SIGMOD 2024): hot ids get a unique row, the rest share hash rows.

Layout: one ``hot`` table shared by every compressed feature (keys ``<f>@hot``) plus a hash table per
feature; ``cafe_ml`` adds a second hash table per feature (keys ``<f>@m``) whose row is summed in
for medium-importance ids. A global :class:`HotSketch` over (feature, id) keys scores every
occurrence, by the L2 norm of the gradient reaching its pooled embedding (normalised to batch mean
1, caught by a backward hook, so fused tables never need ``.grad``) or by frequency.

Hot-set changes happen only in :meth:`after_step`, between steps: the step's scored ids (gathered
from every rank, so every rank's sketch sees the same stream and makes the same decisions) go into
the sketch; a promoted id's hot row is initialised from the hash row(s) it was using and its
optimizer state zeroed; when the inserted mass since the last decay passes ``decay_mass`` scores are
multiplied by ``decay`` and hot ids that fall below the threshold give their row back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchrec import EmbeddingBagConfig

from cafe_dist.collectives import all_gather_cat
from cafe_dist.embeddings.base import CompressedEmbedding, Route, Values, table
from cafe_dist.embeddings.hashing import hash_mod
from cafe_dist.embeddings.spec import FLOAT_BYTES
from cafe_dist.embeddings.table_rows import TableRows
from cafe_dist.sketch import MAX_ID, HotSketch


@dataclass(frozen=True)
class CafeParams:
    hash_fraction: float | None = None  # None: the paper's schedule by ratio (hash_fraction_for)
    importance: str = "grad"  # or "freq"
    threshold: float = 50.0
    decay: float = 0.98
    decay_mass: float | None = None  # None: one decay per (sketch cells) of inserted mass
    ml_threshold: float = 10.0  # cafe_ml: medium ids score in [ml_threshold, threshold)
    ml_fraction: float = 0.5  # cafe_ml: share of the hash budget for the second hash tables
    cells: int = 4
    buckets_per_slot: float = 1.0  # sketch buckets per hot row (cells per hot row = cells × this)


def hash_fraction_for(ratio: float) -> float:
    """The paper's setting: 0.7 of the memory for hash rows at 10×, falling (log-linearly) to 0.15
    at 1000× and beyond."""
    return min(0.7, max(0.15, 0.7 - 0.275 * (math.log10(max(ratio, 1.0)) - 1)))


class CafeEmbedding(CompressedEmbedding):
    multi_level = False

    def __init__(self, features, dim, ratio=1.0, device=None, params: CafeParams | None = None) -> None:
        self.params = params or CafeParams()
        if self.params.importance not in ("grad", "freq"):
            raise ValueError(f"cafe.importance must be 'grad' or 'freq', got {self.params.importance!r}")
        if self.multi_level and self.params.ml_threshold >= self.params.threshold:
            raise ValueError(f"cafe.ml_threshold ({self.params.ml_threshold}) must be below cafe.threshold "
                             f"({self.params.threshold})")
        self.ratio = ratio
        self._pending: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
        self._mass = 0.0
        super().__init__(features, dim, ratio, device)

    # ---- sizing -------------------------------------------------------------------------------
    def method_tables(self) -> list[EmbeddingBagConfig]:
        p = self.params
        self.hf = p.hash_fraction if p.hash_fraction is not None else hash_fraction_for(self.ratio)
        row = self.dim * FLOAT_BYTES
        first = self.hf * (1 - p.ml_fraction) if self.multi_level else self.hf
        self.hash_rows = self.allocate(lambda f, avail: (self.rows_for(avail), self.rows_for(avail) * row), first)
        self.hash2_rows = (self.allocate(lambda f, avail: (self.rows_for(avail), self.rows_for(avail) * row),
                                         self.hf * p.ml_fraction) if self.multi_level else {})
        used = sum(r * self.dim * FLOAT_BYTES for r in (*self.hash_rows.values(), *self.hash2_rows.values()))
        per_slot = self.dim * FLOAT_BYTES + HotSketch.bytes_per_slot(p.cells, p.buckets_per_slot)
        self.hot_rows = max(1, int((self.budget.compressed_bytes - used) // per_slot)) if self.compressed else 0
        offsets = [0]
        for f in self.compressed:
            offsets.append(offsets[-1] + f.cardinality)
        if offsets[-1] > MAX_ID:
            raise ValueError(f"cafe: {offsets[-1]:,} ids across compressed features exceed the sketch's "
                             f"31-bit key space ({MAX_ID:,})")
        self.key_offset = {f.name: o for f, o in zip(self.compressed, offsets)}
        self.sketch = HotSketch(max(1, int(self.hot_rows * p.buckets_per_slot)), self.hot_rows, p.threshold,
                                cells=p.cells)
        self.decay_mass = p.decay_mass or float(self.sketch.w * self.sketch.c)
        if not self.compressed:
            return []
        out = [table("hot", self.hot_rows, self.dim, [f"{f.name}@hot" for f in self.compressed])]
        out += [table(f"hash_{n}", r, self.dim, [n]) for n, r in self.hash_rows.items()]
        out += [table(f"hash2_{n}", r, self.dim, [n + "@m"]) for n, r in self.hash2_rows.items()]
        return out

    def aux_bytes(self) -> int:
        return self.sketch.memory_bytes() if self.compressed else 0

    def state_checksum(self) -> int | None:
        st = self.sketch.state.to(torch.int64)
        return int((st * torch.arange(1, st.numel() + 1, device=st.device).view_as(st)).sum())

    # ---- transform -----------------------------------------------------------------------------
    def _per_feature(self, d: dict[str, int], default: int, v: Values) -> torch.Tensor:
        return self.per_value([d.get(n, default) for n in self.names], v)

    def keys_of(self, v: Values) -> torch.Tensor:
        """Global sketch key of each value (meaningful for compressed features only)."""
        return v.ids + self._per_feature(self.key_offset, 0, v)

    def routes(self, v: Values) -> list[Route]:
        compressed = ~self.is_full[v.feature]
        keys = self.keys_of(v)
        if keys.device != self.sketch.device:  # GPU workers: the sketch follows the ids (tensor path)
            self.sketch.to(keys.device)
        slot = self.sketch.lookup(keys)
        hot = compressed & (slot >= 0)
        cold_rows = hash_mod(v.ids, self._per_feature(self.hash_rows, 1, v))
        main = torch.where(compressed, cold_rows, v.ids)
        routes = [Route("", torch.ones_like(self.is_full), main, mask=~hot),
                  Route("@hot", ~self.is_full, slot.clamp(min=0), mask=hot)]
        medium = torch.zeros_like(hot)
        if self.multi_level:
            medium = compressed & ~hot & (self.sketch.scores(keys) >= self.params.ml_threshold)
            rows2 = hash_mod(v.ids, self._per_feature(self.hash2_rows, 1, v), seed=7)
            routes.append(Route("@m", ~self.is_full, rows2, mask=medium))
        if self.training and torch.is_grad_enabled():
            self._step_keys = (keys[compressed], compressed, medium[compressed])
        else:
            self._step_keys = None
        return routes

    def route_dims(self) -> dict[str, int]:
        dims = {"": self.dim, "@hot": self.dim}
        if self.multi_level:
            dims["@m"] = self.dim
        return dims

    def merge(self, groups: dict[str, torch.Tensor], v: Values) -> torch.Tensor:
        out = sum(groups.values())  # each value took exactly one of main/hot (+ medium's 2nd row)
        if self._step_keys is not None and out.requires_grad:
            # scored in backward, so only occurrences that were actually trained on count
            keys, compressed, medium = self._step_keys
            segment = v.segment[compressed]
            nf, b = len(self.names), v.batch_size
            by_grad = self.params.importance == "grad"

            def record(grad: torch.Tensor) -> None:
                if by_grad:
                    norms = grad.detach().float().norm(dim=2).t().reshape(nf * b)  # per bag, (f, b) order
                    self._pending.append((keys, norms[segment], medium))
                else:
                    self._pending.append((keys, None, medium))

            out.register_hook(record)
        self._step_keys = None
        return out

    # ---- between steps -----------------------------------------------------------------------
    @torch.no_grad()
    def after_step(self, rows: TableRows | None = None) -> dict[str, float]:
        if not self.compressed:
            return {}
        pending, self._pending = self._pending, []
        if not pending:
            return {}
        keys = torch.cat([k for k, _, _ in pending])
        if pending[0][1] is None:
            weights = torch.ones(keys.shape, dtype=torch.float32, device=keys.device)
        else:
            weights = torch.cat([w for _, w, _ in pending])
        # every rank inserts the same global stream, in rank order: identical sketches everywhere
        keys, weights = all_gather_cat(keys), all_gather_cat(weights)
        medium_keys = all_gather_cat(torch.cat([k[m] for k, _, m in pending]))
        if self.params.importance == "grad":
            mean = weights.mean()
            weights = weights / mean if mean > 0 else torch.ones_like(weights)
        update = self.sketch.insert(keys.to(self.sketch.device), weights.to(self.sketch.device))
        promoted_keys, promoted_slots = update.promoted_ids, update.promoted_slots
        self._mass += float(weights.sum())
        demoted = 0
        if self._mass >= self.decay_mass:
            self._mass = 0.0
            demoted = self.sketch.decay(self.params.decay).num_demoted
        # an id promoted and demoted in the same step has no row to initialise
        if promoted_keys.numel():
            still = self.sketch.lookup(promoted_keys) == promoted_slots
            promoted_keys, promoted_slots = promoted_keys[still], promoted_slots[still]
        if rows is not None and promoted_keys.numel():
            self._init_hot_rows(rows, promoted_keys.cpu(), promoted_slots.cpu(), medium_keys.cpu())
        return {"promoted": float(update.num_promoted), "demoted": float(demoted),
                "hot": float(self.sketch.num_hot)}

    def feature_of_keys(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index into ``self.compressed``, id) of each global sketch key."""
        starts = torch.tensor([self.key_offset[f.name] for f in self.compressed], dtype=torch.int64)
        fi = torch.searchsorted(starts, keys, right=True) - 1
        return fi, keys - starts[fi]

    def _init_hot_rows(self, rows: TableRows, keys: torch.Tensor, slots: torch.Tensor,
                       medium_keys: torch.Tensor) -> None:
        """Each new hot row starts as the hash row (plus, for medium ids, the second hash row) the
        id was using; the fused optimizer's state for the hot row starts from zero."""
        fi, ids = self.feature_of_keys(keys)
        requests, places = [], []
        was_medium = torch.isin(keys, medium_keys) if self.multi_level else torch.zeros_like(keys, dtype=torch.bool)
        for i, f in enumerate(self.compressed):
            sel = (fi == i).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            requests.append((f"hash_{f.name}", hash_mod(ids[sel], self.hash_rows[f.name])))
            places.append(sel)
            if self.multi_level:
                m = sel[was_medium[sel]]
                if m.numel():
                    requests.append((f"hash2_{f.name}", hash_mod(ids[m], self.hash2_rows[f.name], seed=7)))
                    places.append(m)
        values = torch.zeros((keys.numel(), self.dim), dtype=torch.float32)
        for place, got in zip(places, rows.read(requests)):
            values[place] += got
        rows.write("hot", slots, values)
        rows.reset_state("hot", slots)


class CafeMLEmbedding(CafeEmbedding):
    """Multi-level CAFE: hot → unique row; medium → two hash rows summed; cold → one hash row."""

    multi_level = True
