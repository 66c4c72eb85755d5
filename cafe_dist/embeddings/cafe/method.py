"""The ``cafe`` and ``cafe_ml`` methods: settings, sizing, the id remapping and the step's wiring.

Its parts, one job each: :mod:`.layout` (rows and keys), :mod:`.scoring` (importance into the local
sketch), :mod:`.client` (the hot-set exchange), :mod:`.migration` (new hot rows); the coordinator's
merger (:mod:`cafe_dist.embeddings.cafe.coordinator`) alone decides which ids are hot and which slot each gets.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torchrec import EmbeddingBagConfig

from cafe_dist.collectives import all_reduce_sum, world
from cafe_dist.embeddings.base import CompressedEmbedding, MethodOptions
from cafe_dist.embeddings.cafe.client import HotSetClient
from cafe_dist.embeddings.cafe.coordinator import ActorSync, CoordinatorService, HotSetMerger, MergeConfig
from cafe_dist.embeddings.cafe.hotmap import HotMap, HotMapUpdate
from cafe_dist.embeddings.cafe.layout import KEY_SEED, ROBE_TABLE, SECOND_SEED, TABLE, CafeLayout
from cafe_dist.embeddings.cafe.migration import init_hot_rows
from cafe_dist.embeddings.cafe.schedule import Learned, VersionSchedule
from cafe_dist.embeddings.cafe.scoring import SKETCH_CELLS, ImportanceScorer
from cafe_dist.embeddings.cafe.sketch import CELL_BYTES, HotSketch
from cafe_dist.embeddings.hashing import hash_mod
from cafe_dist.embeddings.routing import BLOCKS, Route, Values
from cafe_dist.embeddings.spec import FLOAT_BYTES
from cafe_dist.embeddings.table_rows import TableRows
from cafe_dist.embeddings.tables import segmented_table, table

# The authors' artifact (HugoZHL/CAFE, ArtifactEvaluation, tasks/criteo.json): per compression
# ratio, the threshold k an id's score must reach and the share of memory for hash rows.
PAPER_RULES = {10: (20.0, 0.5), 100: (100.0, 0.3), 1000: (500.0, 0.2), 10000: (500.0, 0.1)}


def paper_rule(ratio: float) -> tuple[float, float]:
    """(k, hash share) of the artifact's nearest ratio (in log scale)."""
    near = min(PAPER_RULES, key=lambda r: abs(math.log10(r) - math.log10(max(ratio, 1.0))))
    return PAPER_RULES[near]


class CafeOptions(MethodOptions):
    """CAFE / CAFE-ML settings: the ``cafe`` section of a job (cafe_ml reads it too).

    ``preset: paper`` is the authors' artifact, rule by rule (each rule's source beside it below):
    a fixed threshold k and hash share per ratio (``tasks/criteo.json``), scores decayed by 0.99
    each time 10 x hot slots x k of importance has been inserted (``embeddings/sketch.cpp``
    135-144), importance normalised per field, hash rows per feature in proportion to its
    cardinality, a new hot row copied from its hash row, ~48 B of metadata per hot row. Settings
    given explicitly beside a preset win over it.
    """

    preset: Literal["default", "paper"] = "default"
    # which ids are hot: "capacity" fills every slot each version (the weakest id that fits sets
    # the bar), with hysteresis; "threshold" admits ids scoring at least ``threshold`` while slots last
    admission: Literal["capacity", "threshold"] = "capacity"
    hysteresis: float = Field(1.5, ge=1)  # capacity: incumbents stay at >= bar/h; a newcomer must beat one h-fold
    summary_factor: float = Field(2.0, gt=0)  # capacity: each rank sends its top factor x slots / world ids
    threshold: float = Field(50.0, gt=0)  # threshold admission: score (≈ occurrences) an id needs to be hot
    # memory: the cold tier, its share, how its rows are spread over features
    cold: Literal["hash", "robe"] = "robe"  # robe: cold ids read Z-blocks of one shared array (as `robe`)
    robe_z: int = Field(4, gt=0, multiple_of=4)  # block size of the robe cold tier
    hash_fraction: float | None = Field(None, gt=0, lt=1)  # share for the cold tier; None: by ratio
    cold_rows: Literal["fair", "cardinality"] = "fair"  # hash rows per feature: equal, or by cardinality
    # the cafe table's rows spread so that every row-wise shard gets its share of the hot rows and of
    # their traffic (layout.py); False: hot rows first (what runs saved before the spread existed use)
    spread: bool = True
    # scores
    importance: Literal["grad", "freq"] = "grad"
    normalise: Literal["field", "batch"] = "field"  # importance mean 1 per field (artifact) or over the batch
    half_life_epochs: float | None = Field(0.25, gt=0)  # scores halve every this share of an epoch's samples
    decay: float = Field(0.98, gt=0, le=1)  # used when half_life_epochs is None: per step or per decay_mass
    decay_mass: float | None = Field(None, gt=0)  # None: one decay per step; else per this much (global) importance
    buckets_per_slot: float = Field(0.82, gt=0)  # sketch buckets (SKETCH_CELLS 12 B cells) per hot row: <= 48 B with the map
    # cafe_ml
    ml_threshold: float = Field(10.0, gt=0)  # cafe_ml, threshold admission: medium ids score in [ml_threshold, threshold)
    # cafe_ml: share of the cold tier's memory for the second tables; None: 0.1 with the robe cold tier,
    # 0.5 with hash rows (measured on the real sample, BENCHMARKS.md: with robe blocks the medium ids'
    # second rows are worth less than the blocks they take, 0.1 loses least)
    ml_fraction: float | None = Field(None, gt=0, lt=1)
    # the exchange
    sync_interval: int = Field(10, ge=1)  # steps between hot-set versions
    # a version is learned this many steps after its summaries were sent, then applied over one more
    # step: its rows, then its map (.schedule)
    sync_lag: int = Field(2, ge=0)

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> CafeOptions:
        """Records from before ``spread`` existed have their hot rows first."""
        return cls.model_validate({"spread": False, **saved})

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") == "paper":
            return {**PAPER_PRESET, **data}
        return data


ML_FRACTION = {"robe": 0.1, "hash": 0.5}  # cafe_ml's second tables' share of the cold tier, by cold tier
PAPER_PRESET = {"admission": "threshold", "cold": "hash", "cold_rows": "cardinality", "normalise": "field",
                "half_life_epochs": None, "decay": 0.99, "buckets_per_slot": 0.82}
# k, the hash share and decay_mass (10 x hot slots x k) depend on the ratio: see CafeEmbedding.__init__


def hash_fraction_for(ratio: float, cold: str = "robe") -> float:
    """Share of the memory for the cold tier, by ratio. ``robe``: 0.9 at 10× and below, 0.7 at
    100×, 0.85 at 1000× and 0.9 beyond, log-linear in between (measured, BENCHMARKS.md: at 10×
    0.9 beats 0.7 by 0.0019 on the real 100k sample over 3 seeds and by 0.0058 on a 1 M-row
    profile stream, where ROBE's blocks are already near-private and a hot row's metadata buys
    little; at 100× 0.7 beats 0.9 on the profile streams, 1 M and 10 M rows, and is level on the
    real sample; 0.85-0.95 beat 0.7 at 1000×). ``hash``: 0.7 at 10×, falling to 0.15 at 1000× and
    beyond (hash rows collapse at high ratios, so hot rows get the memory). The artifact's own
    schedule is :data:`PAPER_RULES`."""
    x = math.log10(max(ratio, 1.0))
    if cold == "robe":
        return min(0.9, 0.7 + 0.2 * (2 - x)) if x <= 2 else min(0.9, 0.7 + 0.15 * (x - 2))
    return min(0.7, max(0.15, 0.7 - 0.275 * (x - 1)))


class CafeEmbedding(CompressedEmbedding):
    """Hot ids get a unique row; the rest share a cold tier (hash rows per feature, or a ROBE array).

    Table ``cafe`` holds the hot rows (shared by every compressed feature) and, with ``cold: hash``,
    each compressed feature's hash rows after them, so a value is one lookup on its feature's own
    key whether its id is hot or not. With ``cold: robe`` cold values read D/Z blocks of one shared
    array ``cafe_robe`` instead (extra keys ``<f>@z<j>``), as the ``robe`` method does, which
    degrades gracefully at any ratio. ``cafe_ml`` adds a second hash table per feature (keys
    ``<f>@m``) whose row is summed in for medium-importance ids.

    Distributed by design (one code path; a single worker is world size 1): each rank scores its
    own batches, sends a summary every ``sync_interval`` steps, and learns the coordinator's
    version ``sync_lag`` steps later, at the same step as every other rank, so every rank maps
    every id to the same row; a version learned after step t initialises its rows after step t+1
    and maps batches from t+2 on (:mod:`.schedule`: what lets a pipeline remap a batch ahead). A
    promoted id's hot row starts as the cold vector it was reading, with zeroed optimizer state; a
    demoted id goes back to the cold tier.
    """

    multi_level = False
    options = CafeOptions
    section = "cafe"
    service = CoordinatorService
    keeps_hot_set = True
    level_stats = {"hot": "hot_ids", "churn": "last_churn"}
    plots = {"hot_set.png": (("hot",), ("churn",), ("promoted", "demoted"), ("sync_overhead",))}
    TABLE = TABLE

    def __init__(self, features, dim, ratio=1.0, device=None, params: CafeOptions | None = None) -> None:
        p = params or CafeOptions()
        self.params = p
        if self.multi_level and p.admission == "threshold" and p.ml_threshold >= p.threshold:
            raise ValueError(f"cafe.ml_threshold ({p.ml_threshold}) must be below cafe.threshold ({p.threshold})")
        self.ratio = ratio
        self.paper = p.preset == "paper"
        k, share = paper_rule(ratio)
        explicit = p.model_fields_set
        self.threshold = k if self.paper and "threshold" not in explicit else p.threshold
        self.hf = (p.hash_fraction if p.hash_fraction is not None
                   else share if self.paper else hash_fraction_for(ratio, p.cold))
        self.steps = 0
        self.client = HotSetClient(p.sync_interval, p.sync_lag)
        self.schedule = VersionSchedule()  # versions learned, not yet in the rows or the map
        self._switched = False  # the map changed since the sketch last pinned the hot ids' cells
        self.overhead_s = 0.0
        self.phase_s = {"sketch": 0.0, "sync": 0.0, "migration": 0.0}  # where after_step's time goes
        # what the memory does, after warm-up (the first version applied): lookups of compressed
        # features served by a hot row / all of them, and hot slots in use summed over steps
        self._coverage: torch.Tensor | None = None
        self._used_sum, self._used_steps = 0.0, 0
        super().__init__(features, dim, ratio, device)

    @classmethod
    def build(cls, features, dim, ratio, device, options: CafeOptions | None) -> CafeEmbedding:
        return cls(features, dim, ratio, device, params=options)

    # ---- sizing -------------------------------------------------------------------------------
    def _cold_rows(self, share: float) -> dict[str, int]:
        """Hash rows per compressed feature from ``share`` of the budget: equal shares (``fair``) or
        in proportion to cardinality (the artifact's rule), at least one each."""
        if self.params.cold_rows == "fair":
            return self.allocate_rows(share)
        total = share * self.budget.compressed_bytes / (self.dim * FLOAT_BYTES)
        cards = sum(f.cardinality for f in self.compressed)
        return {f.name: max(1, int(total * f.cardinality / cards)) for f in self.compressed}

    def method_tables(self) -> list[EmbeddingBagConfig]:
        p = self.params
        row = self.dim * FLOAT_BYTES
        robe = p.cold == "robe"
        if robe and self.dim % p.robe_z:
            raise ValueError(f"cafe.robe_z ({p.robe_z}) must divide embedding.dim ({self.dim})")
        ml = p.ml_fraction if p.ml_fraction is not None else ML_FRACTION[p.cold]
        if self.multi_level and self.compressed:  # at least a second row per feature: at tiny budgets, more share
            ml = min(max(ml, len(self.compressed) * row / max(self.hf * self.budget.compressed_bytes, 1.0)), 0.9)
        self.ml_fraction = ml if self.multi_level else None
        first = self.hf * (1 - ml) if self.multi_level else self.hf  # cafe_ml: the rest, second rows
        robe_rows = self.rows_for(first * self.budget.compressed_bytes, p.robe_z) if robe and self.compressed else 0
        hash_rows = {} if robe else self._cold_rows(first)
        hash2_rows = self._cold_rows(self.hf * ml) if self.multi_level else {}
        used = robe_rows * p.robe_z * FLOAT_BYTES + sum(r * row for r in (*hash_rows.values(), *hash2_rows.values()))
        per_slot = (row + p.buckets_per_slot * SKETCH_CELLS * (CELL_BYTES + 1 / 8) + HotMap.BYTES_PER_HOT
                    + (HotMap.BYTES_PER_MEDIUM if self.multi_level else 0))
        hot_rows = max(1, int((self.budget.compressed_bytes - used) // per_slot)) if self.compressed else 0
        self.layout = CafeLayout.plan({f.name: f.cardinality for f in self.compressed}, hot_rows, hash_rows,
                                      hash2_rows, robe_rows, p.robe_z if robe else 0, spread=p.spread)
        if p.half_life_epochs is not None:
            decay = None  # set per step from the samples seen (bind_data gives the epoch's size)
        elif self.paper and "decay_mass" not in p.model_fields_set:
            decay = ("mass", p.decay, 10.0 * hot_rows * self.threshold)
        else:
            decay = ("mass", p.decay, p.decay_mass) if p.decay_mass is not None else ("step", p.decay, None)
        self.scorer = ImportanceScorer(max(1, int(hot_rows * p.buckets_per_slot)), p.importance, p.normalise, decay)
        self.hot_map = HotMap()
        if not self.compressed:
            return []
        names = list(self.layout.compressed)
        out = [segmented_table(TABLE, [hot_rows, *hash_rows.values()], self.dim, names, logical=self.layout.logical)]
        if robe:
            out.append(table(ROBE_TABLE, robe_rows, p.robe_z,
                             [f"{n}@z{j}" for n in names for j in range(self.layout.blocks(self.dim))]))
        out += [table(f"hash2_{n}", r, self.dim, [n + "@m"]) for n, r in hash2_rows.items()]
        return out

    def bind_data(self, train_rows: int) -> None:
        if self.params.half_life_epochs is not None:
            self.scorer.half_life_samples = self.params.half_life_epochs * train_rows

    # the layout's figures, read by tests, probes and benchmarks
    hot_rows = property(lambda self: self.layout.hot_rows)
    hash_rows = property(lambda self: self.layout.hash_rows)
    hash2_rows = property(lambda self: self.layout.hash2_rows)
    hash_base = property(lambda self: self.layout.hash_base)
    sketch = property(lambda self: self.scorer.sketch)

    def key_of(self, feature: str, ids: torch.Tensor | int) -> torch.Tensor:
        """Global keys of raw values ``ids`` of ``feature`` (what the hot map and sketch hold)."""
        return self.layout.key(feature, torch.as_tensor(ids, dtype=torch.int64))

    def hash_row(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        """Row of the ``cafe`` table that cold raw values ``ids`` of ``feature`` share."""
        return self.layout.hash_row(feature, self.key_of(feature, ids))

    def hot_row(self, slots: torch.Tensor) -> torch.Tensor:
        """Row of the ``cafe`` table that hot ``slots`` own."""
        return self.layout.hot_row(torch.as_tensor(slots, dtype=torch.int64))

    def aux_bytes(self) -> int:
        if not self.compressed:
            return 0
        return self.sketch.memory_bytes() + self.hot_map.memory_bytes(
            self.hot_rows, self.hot_rows if self.multi_level else 0)

    def resolved_options(self) -> dict[str, Any]:
        decay = self.scorer.decay
        out = {"hash_fraction": self.hf, "threshold": self.threshold,
               "decay_mass": "per half-life" if decay is None else decay[2] if decay[0] == "mass" else "per step"}
        if not self.multi_level:  # cafe_ml's settings, in the section cafe shares with it
            out.update(ml_fraction=None, ml_threshold=None)
        else:
            out["ml_fraction"] = self.ml_fraction
        return out

    def hot_row_places(self, lookups: np.ndarray, world_size: int) -> tuple[str, np.ndarray] | None:
        """Where the first hot-set version puts ids with these scores: the merger's own choice (the
        strongest ids in turn to the row-wise block with the least hot score), read back as rows."""
        if not self.compressed:
            return None
        n = min(len(lookups), self.hot_rows)
        cfg = replace(self.coordinator_config(world_size), admission="capacity", hysteresis=1.0, ml_threshold=None,
                      max_medium=0)
        merger = HotSetMerger(cfg)
        keys, none = np.arange(n, dtype=np.int64), np.zeros(0, np.int64)
        for rank in range(world_size):  # one rank sees it all
            merger.submit(0, rank, keys if rank == 0 else none, lookups[:n] if rank == 0 else none)
        update = merger.update(0)
        rows = np.empty(n, np.int64)
        rows[update.promoted_keys.numpy()] = self.layout.hot_row(update.promoted_slots).numpy()
        return TABLE, rows

    def coordinator_config(self, world_size: int) -> MergeConfig:
        p = self.params
        return MergeConfig(num_slots=self.hot_rows, threshold=self.threshold, world_size=world_size,
                           ml_threshold=p.ml_threshold if self.multi_level else None,
                           max_medium=self.hot_rows if self.multi_level else 0,
                           admission=p.admission, hysteresis=p.hysteresis, slot_rows=self.layout.table_rows,
                           slot_stride=self.layout.stride)

    def summary(self, rank: int, world_size: int) -> tuple[np.ndarray, np.ndarray]:
        """What this rank sends each round. Capacity admission: the strongest ``summary_factor`` x
        slots / world ids of the rank's own part of the id space. Every rank sees every popular id,
        so their overall top lists would nearly coincide and, with 3 or more ranks, together name
        fewer ids than there are slots (the hot set would stay part empty); parts are disjoint, so
        the lists together name ``summary_factor`` x slots ids. Threshold admission: every cell
        scoring at least a share of the threshold."""
        if self.params.admission == "capacity":  # cafe_ml: room for as many medium ids as hot ones
            wanted = self.hot_rows * (2 if self.multi_level else 1)
            return self.scorer.top(math.ceil(self.params.summary_factor * wanted / world_size), rank, world_size)
        floor = min(self.threshold, self.params.ml_threshold if self.multi_level else math.inf)
        return self.scorer.candidates(floor / (2 * world_size))

    def connect(self, run_name: str, world_size: int) -> None:
        self.client.connect(ActorSync(run_name, self.coordinator_config(world_size)))

    # ---- the id remapping (pure: nothing is kept between calls) ---------------------------------
    def _per_feature(self, d: dict[str, int], default: int, v: Values) -> torch.Tensor:
        return self.per_value([d.get(n, default) for n in self.names], v)

    def keys_of(self, v: Values) -> torch.Tensor:
        """Global sketch key of each value (meaningful for compressed features only)."""
        space = self._per_feature(self.layout.key_space, 1, v)
        return self._per_feature(self.layout.key_offset, 0, v) + hash_mod(v.ids, space, seed=KEY_SEED)

    def state_checksum(self) -> int | None:
        return self.hot_map.checksum() if self.compressed else None

    def routes(self, v: Values) -> list[Route]:
        compressed = ~self.is_full.index_select(0, v.feature)
        keys = self.keys_of(v)
        if keys.device != self.hot_map.device:  # GPU workers: map and sketch follow the ids
            self.hot_map.to(keys.device)
            self.scorer.to(keys.device)
        slot = self.hot_map.lookup(keys)
        hot = compressed & (slot >= 0)
        lay = self.layout
        if lay.robe:  # hot and full values on the main route, cold ones read their blocks
            routes = [Route("", torch.ones_like(self.is_full), torch.where(hot, lay.hot_row(slot), v.ids),
                            mask=hot | ~compressed)]
            cold = (compressed & ~hot).nonzero().squeeze(1)  # their blocks are hashed for them alone
            cold_keys = keys.index_select(0, cold)
            on = ~self.is_full
            routes += [Route(s, on, lay.robe_row(cold_keys, j), at=cold) for j, s in enumerate(self.block_suffixes())]
            if self.multi_level:  # medium ids add a row of their feature's second table to their blocks
                routes.append(self._medium_route(v, keys, compressed & ~hot))
            return routes
        cold_rows = self._per_feature(self.hash_base, 0, v) + hash_mod(keys, self._per_feature(self.hash_rows, 1, v))
        main = torch.where(compressed, lay.row(torch.where(hot, slot, cold_rows)), v.ids)
        routes = [Route("", torch.ones_like(self.is_full), main)]
        if self.multi_level:
            routes.append(self._medium_route(v, keys, compressed & ~hot))
        return routes

    def _medium_route(self, v: Values, keys: torch.Tensor, cold: torch.Tensor) -> Route:
        """cafe_ml: medium ids (cold, and in the medium set) add their row of a second hash table."""
        medium = cold & self.hot_map.is_medium(keys)
        rows2 = hash_mod(keys, self._per_feature(self.hash2_rows, 1, v), seed=SECOND_SEED)
        return Route("@m", ~self.is_full, rows2, mask=medium)

    def warmed_up(self) -> bool:
        """Whether the first hot-set version maps the batch being trained (coverage counts from then
        on): it is learned after step interval + lag and maps from two batches later (.schedule)."""
        return self.steps >= self.params.sync_interval + self.params.sync_lag + 1

    def route_dims(self) -> dict[str, int]:
        dims = {"": self.dim}
        if self.multi_level:
            dims["@m"] = self.dim
        dims.update(dict.fromkeys(self.block_suffixes(), self.layout.z))  # none unless the cold tier is robe
        return dims

    def block_suffixes(self) -> tuple[str, ...]:
        return tuple(f"@z{j}" for j in range(self.layout.blocks(self.dim))) if self.compressed else ()

    def merge(self, groups: dict[str, torch.Tensor], v: Values, routes: list[Route]) -> torch.Tensor:
        out = groups[""]
        if self.multi_level:
            out = out + groups["@m"]  # medium ids: 2nd row summed in
        if self.compressed and self.layout.robe:  # a compressed value is on the main route or its blocks
            out = out.index_add(1, self.compressed_index, groups[BLOCKS])
        if self.training and torch.is_grad_enabled() and out.requires_grad and self.compressed:
            compressed = ~self.is_full.index_select(0, v.feature)
            cv = v.take(compressed.nonzero().squeeze(1))
            # scored in backward, so only occurrences that were actually trained on count
            self.scorer.capture(out, self.keys_of(cv), cv.feature, cv.segment, v.batch_size)
            if self.warmed_up():
                main = routes[0]
                on_hot = main.mask if main.mask is not None else self.layout.logical(main.values) < self.hot_rows
                hot = compressed & on_hot
                counts = torch.stack([hot.sum(), compressed.sum()])  # stays on the device: no sync per step
                self._coverage = counts if self._coverage is None else self._coverage + counts
        return out

    # ---- between steps -----------------------------------------------------------------------
    def before_remap(self, index: int) -> None:
        """A pipeline remaps batch ``index`` before step ``index - 1``'s between-steps work: switch
        to the versions that map it now (.schedule; the plain loop switches in :meth:`after_step`)."""
        self._switch(index)

    def _switch(self, batch: int) -> None:
        for learned in self.schedule.switches(batch):
            self.hot_map.apply(learned.update)
            self._switched = True

    @torch.no_grad()
    def after_step(self, rows: TableRows | None = None) -> dict[str, float]:
        """Score this step's ids into the sketch; initialise the rows of the version learned last
        step and map the next batch with it; send a summary or learn a version when due."""
        if not self.compressed:
            return {}
        t0 = time.perf_counter()
        rank, world_size = world()
        self.scorer.flush(world_size)
        self.steps += 1
        t1 = time.perf_counter()
        self._apply_due(rows, self.steps, self.steps + 1)
        t2 = time.perf_counter()
        stats, _ = self.client.step(self.steps, rank, self.coordinator_config(world_size),
                                    summary=lambda: self.summary(rank, world_size), apply=self._learn)
        stats["hot"] = float(len(self.hot_map))
        if self.warmed_up():
            self._used_sum += stats["hot"]
            self._used_steps += 1
        t3 = time.perf_counter()
        self.phase_s["sketch"] += t1 - t0
        self.phase_s["migration"] += t2 - t1
        self.phase_s["sync"] += t3 - t2
        self.overhead_s += t3 - t0
        return stats

    def _learn(self, update: HotMapUpdate) -> None:
        """A version whose lag has passed: its rows next step, its map from the batch after (.schedule)."""
        was_medium = None
        if self.multi_level and update.promoted_keys.numel():
            latest = self.schedule.latest()
            medium = latest.medium_keys if latest is not None else self.hot_map.medium
            was_medium = torch.isin(update.promoted_keys.cpu(), medium.cpu().to(torch.int64))
        self.schedule.learn(Learned(update, self.steps, was_medium))

    def _migrate(self, learned: Learned, rows: TableRows | None) -> None:
        """Promoted ids' hot rows start as the cold vectors they were reading."""
        update = learned.update
        if rows is not None and update.promoted_keys.numel():
            init_hot_rows(rows, self.layout, self.dim, update.promoted_keys.cpu(), update.promoted_slots.cpu(),
                          learned.was_medium)

    def _apply_due(self, rows: TableRows | None, step: int, batch: int) -> None:
        """The rows of the versions due after step ``step``, then the maps of those due by batch
        ``batch`` (.schedule), then the hot ids' sketch cells pinned if the map changed."""
        for learned in self.schedule.migrations(step):
            self._migrate(learned, rows)
        self._switch(batch)
        self._protect()

    def _protect(self) -> None:
        if self._switched:
            self.scorer.protect(self.hot_map.keys)  # the local cells of hot ids are not evicted
            self._switched = False

    def apply_update(self, update: HotMapUpdate, rows: TableRows | None) -> None:
        """Apply one hot-set version at once: initialise promoted rows, then switch the map."""
        self._learn(update)
        self.settle(rows)

    def settle(self, rows: TableRows | None = None) -> None:
        """Apply every version learned and not yet applied, rows then map, now: what the schedule
        does over the next step, for tools and tests that look at the map right after a step."""
        self._apply_due(rows, sys.maxsize, sys.maxsize)

    def rounds_in_flight(self) -> list[int]:
        return self.client.rounds_in_flight()

    # ---- checkpoint state ----------------------------------------------------------------------
    def local_state(self) -> dict:
        if not self.compressed:
            return {}
        scorer, client = self.scorer.state_dict(), self.client.state_dict()
        return {"sketch": scorer["sketch"], "mass": scorer["mass"], "hot_map": self.hot_map.state_dict(),
                "steps": self.steps, "due": client["due"], "sync_log": client["sync_log"],
                "schedule": self.schedule.state_dict(),
                "overhead_s": self.overhead_s, "used": (self._used_sum, self._used_steps),
                "coverage": None if self._coverage is None else self._coverage.cpu()}

    def reshard_local_states(self, states: list[dict], world_size: int) -> dict:
        """Elastic resume: every old rank's sketch into this rank's, each score divided by the new
        world size (the old sketches together hold the global scores; a worker sees 1/world of the
        traffic), the hot ids' cells pinned again; the rest (hot map, rounds in flight, counters)
        is the same on every rank, so rank 0's."""
        if not states[0]:
            return states[0]
        merged = dict(states[0])
        old = HotSketch(self.sketch.w, cells=self.sketch.c)
        into = HotSketch(self.sketch.w, cells=self.sketch.c)
        for state in states:
            old.load_state_dict(state["sketch"])
            ids, scores = old.candidates(0.0)
            into.insert(torch.from_numpy(ids), torch.from_numpy(scores) / world_size)
        hot = state["hot_map"]["keys"].to(torch.int64)
        if hot.numel():
            into.pin(hot)
        merged["sketch"] = into.state_dict()
        merged["mass"] = sum(s["mass"] for s in states) / world_size
        counts = [s["coverage"] for s in states if s.get("coverage") is not None]
        merged["coverage"] = sum(counts) / world_size if counts else None
        return merged

    def hot_ids(self) -> dict[str, np.ndarray]:
        """The current hot set: ``feature`` (name), global ``key``, ``slot`` and this rank's sketch
        ``score`` of every hot id (what ``cafe-dist hot`` lists)."""
        keys = self.hot_map.keys.to(torch.int64).cpu()
        fi = self.layout.feature_of_keys(keys)
        names = np.asarray(self.layout.compressed, dtype=object)
        return {"feature": names[fi.numpy()] if len(keys) else np.array([], dtype=object), "key": keys.numpy(),
                "slot": self.hot_map.slots.cpu().numpy(), "score": self.sketch.scores(keys).cpu().numpy()}

    def serving_state(self) -> dict:
        """The hot map only: the sketch and the exchange's bookkeeping serve training alone."""
        return {"hot_map": self.hot_map.state_dict()} if self.compressed else {}

    def load_serving_state(self, state: dict) -> None:
        if state:
            self.hot_map.load_state_dict(state["hot_map"])

    def load_local_state(self, state: dict) -> None:
        if not state:
            return
        self.scorer.load_state_dict(state)
        self.client.load_state_dict(state)
        self.hot_map.load_state_dict(state["hot_map"])
        self.schedule.load_state_dict(state.get("schedule"))
        self.steps, self.overhead_s = state["steps"], state["overhead_s"]
        self._used_sum, self._used_steps = state.get("used", (0.0, 0))
        self._coverage = state.get("coverage")

    # ---- telemetry -----------------------------------------------------------------------------
    def memory_use(self) -> dict[str, float]:
        """What the hot rows do, after warm-up: ``hot_slots`` (rows the budget gives), ``hot_slots_used``
        (ids hot, averaged over steps) and ``hot_coverage`` (share of compressed-feature lookups, over
        all ranks, served by a hot row). Every rank must call it (the counts are summed)."""
        counts = torch.zeros(2, dtype=torch.float64) if self._coverage is None else self._coverage.double().cpu()
        counts = all_reduce_sum(counts.to(self.hot_map.device)).cpu()
        return {"hot_slots": float(self.hot_rows),
                "hot_slots_used": self._used_sum / self._used_steps if self._used_steps else 0.0,
                "hot_coverage": float(counts[0] / counts[1]) if counts[1] > 0 else float("nan")}

    def sync_summary(self, train_time_s: float) -> dict[str, float]:
        """What --output-json reports about the hot-set exchange and the hot rows' use."""
        return {
            **(self.memory_use() if self.compressed else {}),
            "hot_map_version": float(self.hot_map.version),
            "sync_overhead_fraction": self.overhead_s / train_time_s if train_time_s > 0 else 0.0,
            **self.client.summary(),
        }


class CafeMLEmbedding(CafeEmbedding):
    """Multi-level CAFE: hot → unique row; medium → two hash rows summed; cold → one hash row."""

    multi_level = True
