"""CAFE (Zhang et al., SIGMOD 2024): hot ids get a unique row, the rest share hash rows.

Layout: one table ``cafe`` holds the hot rows (shared by every compressed feature, rows
``[0, hot_rows)``) followed by each compressed feature's hash rows, so a value is one lookup on its
feature's own key whether its id is hot or not: the KJT keeps one key per feature, the EBC pools one
bag per (sample, feature), as for the hashing trick, and there is nothing to combine. ``cafe_ml``
adds a second hash table per feature (keys ``<f>@m``) whose row is summed in for medium-importance
ids. On GPUs the one table shards row-wise across all ranks; on CPU, table-wise puts it on one rank
(column-wise splits it).

Distributed by design (one code path; a single worker is world size 1):
- Each worker scores the ids of its own batches in a local :class:`HotSketch` over global
  (feature, id) keys: by the L2 norm of the gradient reaching each occurrence's pooled embedding
  (normalised to batch mean 1, caught by a backward hook, so fused tables never need ``.grad``) or
  by frequency. Scores decay by ``decay`` once per step, or per ``decay_mass`` of (global)
  inserted importance when that is set.
- Every ``sync_interval`` steps it sends its candidate cells to the coordinator
  (:mod:`cafe_dist.coordinator`), which merges all ranks' summaries into version v of the global
  hot set; every rank applies version v ``sync_lag`` steps later, at the same step, so the
  exchange overlaps training and every rank maps every id to the same row.
- Applying a version happens between steps: a promoted id's hot row is initialised from the hash
  row(s) it was using and its optimizer state zeroed (across DMP shards, via
  :class:`TableRows`); a demoted id's slot is freed and the id goes back to its hash row.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Literal

import torch
from pydantic import Field
from torchrec import EmbeddingBagConfig

from cafe_dist.collectives import all_reduce_sum, world
from cafe_dist.coordinator import ActorSync, CollectiveSync, MergeConfig
from cafe_dist.embeddings.base import (
    CompressedEmbedding,
    MethodOptions,
    Route,
    Values,
    segmented_table,
    table,
)
from cafe_dist.embeddings.hashing import hash_mod
from cafe_dist.embeddings.spec import FLOAT_BYTES
from cafe_dist.embeddings.table_rows import TableRows
from cafe_dist.hotmap import HotMap, HotMapUpdate
from cafe_dist.sketch import CELL_BYTES, MAX_ID, HotSketch

SKETCH_CELLS = 4  # cells per sketch bucket


class CafeOptions(MethodOptions):
    """CAFE / CAFE-ML settings: the ``cafe`` section of a job (cafe_ml reads it too)."""

    hash_fraction: float | None = Field(None, gt=0, lt=1)  # None: by ratio (hash_fraction_for)
    importance: Literal["grad", "freq"] = "grad"
    threshold: float = Field(50.0, gt=0)  # score (≈ occurrences) an id needs to become hot
    decay: float = Field(0.98, gt=0, le=1)
    decay_mass: float | None = Field(None, gt=0)  # None: one decay per step; else per this much (global) importance
    ml_threshold: float = Field(10.0, gt=0)  # cafe_ml: medium ids score in [ml_threshold, threshold)
    ml_fraction: float = Field(0.5, gt=0, lt=1)  # cafe_ml: share of the hash budget for the second hash tables
    buckets_per_slot: float = Field(1.0, gt=0)  # sketch size: buckets per hot row, of SKETCH_CELLS cells each
    sync_interval: int = Field(10, ge=1)  # steps between hot-set versions
    sync_lag: int = Field(2, ge=0)  # a version is applied this many steps after the summaries were sent


def hash_fraction_for(ratio: float) -> float:
    """The paper's setting: 0.7 of the memory for hash rows at 10×, falling (log-linearly) to 0.15
    at 1000× and beyond."""
    return min(0.7, max(0.15, 0.7 - 0.275 * (math.log10(max(ratio, 1.0)) - 1)))


class CafeEmbedding(CompressedEmbedding):
    multi_level = False
    options = CafeOptions
    section = "cafe"
    needs_coordinator = True
    level_stats = {"hot": "hot_ids", "churn": "last_churn"}
    plots = {"hot_set.png": (("hot",), ("churn",), ("promoted", "demoted"), ("sync_overhead",))}
    TABLE = "cafe"  # hot rows first, then each compressed feature's hash rows

    def __init__(self, features, dim, ratio=1.0, device=None, params: CafeOptions | None = None) -> None:
        self.params = params or CafeOptions()
        if self.multi_level and self.params.ml_threshold >= self.params.threshold:
            raise ValueError(f"cafe.ml_threshold ({self.params.ml_threshold}) must be below cafe.threshold "
                             f"({self.params.threshold})")
        self.ratio = ratio
        self._pending: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self._mass = 0.0
        self.steps = 0
        self.sync = None
        self._due: deque[tuple[int, int, float, float]] = deque()  # (round, apply at step, sent at, bytes)
        self._step_ends: deque[float] = deque(maxlen=256)
        self.sync_log: list[dict[str, float]] = []
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
    def method_tables(self) -> list[EmbeddingBagConfig]:
        p = self.params
        self.hf = p.hash_fraction if p.hash_fraction is not None else hash_fraction_for(self.ratio)
        row = self.dim * FLOAT_BYTES
        first = self.hf * (1 - p.ml_fraction) if self.multi_level else self.hf
        self.hash_rows = self.allocate_rows(first)
        self.hash2_rows = self.allocate_rows(self.hf * p.ml_fraction) if self.multi_level else {}
        used = sum(r * row for r in (*self.hash_rows.values(), *self.hash2_rows.values()))
        per_slot = (row + p.buckets_per_slot * SKETCH_CELLS * CELL_BYTES + HotMap.BYTES_PER_HOT
                    + (HotMap.BYTES_PER_MEDIUM if self.multi_level else 0))
        self.hot_rows = max(1, int((self.budget.compressed_bytes - used) // per_slot)) if self.compressed else 0
        offsets = [0]
        for f in self.compressed:
            offsets.append(offsets[-1] + f.cardinality)
        if offsets[-1] > MAX_ID:
            raise ValueError(f"cafe: {offsets[-1]:,} ids across compressed features exceed the sketch's "
                             f"31-bit key space ({MAX_ID:,})")
        self.key_offset = {f.name: o for f, o in zip(self.compressed, offsets)}
        # the local sketch only scores: hot slots are handed out by the coordinator's merge
        self.sketch = HotSketch(max(1, int(self.hot_rows * p.buckets_per_slot)), 0, p.threshold, cells=SKETCH_CELLS)
        self.hot_map = HotMap()
        self.hash_base: dict[str, int] = {}  # first row of each feature's hash rows in the table
        base = self.hot_rows
        for n, r in self.hash_rows.items():
            self.hash_base[n] = base
            base += r
        if not self.compressed:
            return []
        out = [segmented_table(self.TABLE, [self.hot_rows, *self.hash_rows.values()], self.dim,
                               [f.name for f in self.compressed])]
        out += [table(f"hash2_{n}", r, self.dim, [n + "@m"]) for n, r in self.hash2_rows.items()]
        return out

    def hash_row(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        """Row of the ``cafe`` table that cold ``ids`` of ``feature`` share."""
        return self.hash_base[feature] + hash_mod(ids, self.hash_rows[feature])

    def aux_bytes(self) -> int:
        if not self.compressed:
            return 0
        return self.sketch.memory_bytes() + self.hot_map.memory_bytes(
            self.hot_rows, self.hot_rows if self.multi_level else 0)

    def merge_config(self, world_size: int) -> MergeConfig:
        return MergeConfig(num_slots=self.hot_rows, threshold=self.params.threshold, world_size=world_size,
                           ml_threshold=self.params.ml_threshold if self.multi_level else None,
                           max_medium=self.hot_rows if self.multi_level else 0)

    def attach_sync(self, sync) -> None:
        """Use ``sync`` (ActorSync or CollectiveSync) to exchange summaries and receive versions."""
        self.sync = sync

    def connect(self, run_name: str, world_size: int) -> None:
        self.attach_sync(ActorSync(run_name, self.merge_config(world_size)))

    # ---- transform -----------------------------------------------------------------------------
    def _per_feature(self, d: dict[str, int], default: int, v: Values) -> torch.Tensor:
        return self.per_value([d.get(n, default) for n in self.names], v)

    def keys_of(self, v: Values) -> torch.Tensor:
        """Global sketch key of each value (meaningful for compressed features only)."""
        return v.ids + self._per_feature(self.key_offset, 0, v)

    def state_checksum(self) -> int | None:
        return self.hot_map.checksum() if self.compressed else None

    def routes(self, v: Values) -> list[Route]:
        compressed = ~self.is_full.index_select(0, v.feature)
        keys = self.keys_of(v)
        if keys.device != self.hot_map.device:  # GPU workers: map and sketch follow the ids
            self.hot_map.to(keys.device)
            self.sketch.to(keys.device)
        slot = self.hot_map.lookup(keys)
        hot = compressed & (slot >= 0)
        cold_rows = self._per_feature(self.hash_base, 0, v) + hash_mod(v.ids, self._per_feature(self.hash_rows, 1, v))
        main = torch.where(hot, slot, torch.where(compressed, cold_rows, v.ids))
        routes = [Route("", torch.ones_like(self.is_full), main)]
        if self.multi_level:
            medium = compressed & ~hot & self.hot_map.is_medium(keys)
            rows2 = hash_mod(v.ids, self._per_feature(self.hash2_rows, 1, v), seed=7)
            routes.append(Route("@m", ~self.is_full, rows2, mask=medium))
        self._step_keys = (keys[compressed], compressed) if self.training and torch.is_grad_enabled() else None
        if self._step_keys is not None and self.warmed_up():
            counts = torch.stack([hot.sum(), compressed.sum()])  # stays on the device: no sync per step
            self._coverage = counts if self._coverage is None else self._coverage + counts
        return routes

    def warmed_up(self) -> bool:
        """Whether the first hot-set version has been applied (coverage counts from then on)."""
        return self.steps >= self.params.sync_interval + self.params.sync_lag

    def route_dims(self) -> dict[str, int]:
        dims = {"": self.dim}
        if self.multi_level:
            dims["@m"] = self.dim
        return dims

    def merge(self, groups: dict[str, torch.Tensor], v: Values) -> torch.Tensor:
        out = groups[""] + groups["@m"] if self.multi_level else groups[""]  # medium ids: 2nd row summed in
        if self._step_keys is not None and out.requires_grad:
            # scored in backward, so only occurrences that were actually trained on count
            keys, compressed = self._step_keys
            segment = v.segment[compressed]
            nf, b = len(self.names), v.batch_size
            by_grad = self.params.importance == "grad"

            def record(grad: torch.Tensor) -> None:
                if by_grad:
                    norms = grad.detach().float().norm(dim=2).t().reshape(nf * b)  # per bag, (f, b) order
                    self._pending.append((keys, norms.index_select(0, segment)))
                else:
                    self._pending.append((keys, None))

            out.register_hook(record)
        self._step_keys = None
        return out

    # ---- between steps -----------------------------------------------------------------------
    @torch.no_grad()
    def after_step(self, rows: TableRows | None = None) -> dict[str, float]:
        if not self.compressed:
            return {}
        t0 = time.perf_counter()
        rank, world_size = world()
        if self.sync is None:
            self.sync = CollectiveSync(self.merge_config(world_size))
        pending, self._pending = self._pending, []
        if pending:
            keys = torch.cat([k for k, _ in pending])
            if pending[0][1] is None:
                weights = None
                mass = float(keys.numel())
            else:
                weights = torch.cat([w for _, w in pending])
                mean = weights.mean()
                weights = weights / mean if mean > 0 else torch.ones_like(weights)
                mass = float(weights.numel())
            self.sketch.insert(keys.to(self.sketch.device), None if weights is None else weights.to(self.sketch.device))
            if self.params.decay_mass is None:  # default: one decay per training step
                self.sketch.decay(self.params.decay)
            else:  # one decay per decay_mass of global importance; this rank sees 1/world of it
                self._mass += mass
                while self._mass >= self.params.decay_mass / world_size:
                    self._mass -= self.params.decay_mass / world_size
                    self.sketch.decay(self.params.decay)
        self.steps += 1
        stats: dict[str, float] = {}
        t1 = time.perf_counter()
        self.phase_s["sketch"] += t1 - t0
        migration = 0.0
        if self.steps % self.params.sync_interval == 0:
            round_ = self.steps // self.params.sync_interval - 1
            min_score = min(self.params.threshold, self.params.ml_threshold if self.multi_level else math.inf)
            cand_keys, cand_scores = self.sketch.candidates(min_score / (2 * world_size))
            self.sync.send(round_, rank, cand_keys, cand_scores)
            self._due.append((round_, self.steps + self.params.sync_lag, time.time(),
                              float(cand_keys.nbytes + cand_scores.nbytes)))
        while self._due and self._due[0][1] <= self.steps:
            round_, _, sent_at, sent_bytes = self._due.popleft()
            t_wait = time.perf_counter()
            update = self.sync.receive(round_)
            waited = time.perf_counter() - t_wait
            self.apply_update(update, rows)
            migration += time.perf_counter() - t_wait - waited
            ready = update.stats.get("ready_at", update.stats.get("merged_at", sent_at))
            in_flight = sum(1 for t in self._step_ends if sent_at < t < ready)
            self.sync_log.append({**update.stats, "wait_s": waited, "steps_in_flight": in_flight,
                                  "bytes_sent": sent_bytes})
            stats.update(promoted=update.stats["promoted"], demoted=update.stats["demoted"],
                         churn=update.stats["churn"])
        stats["hot"] = float(len(self.hot_map))
        if self.warmed_up():
            self._used_sum += stats["hot"]
            self._used_steps += 1
        self._step_ends.append(time.time())
        t2 = time.perf_counter()
        self.phase_s["migration"] += migration
        self.phase_s["sync"] += t2 - t1 - migration
        self.overhead_s += t2 - t0
        return stats

    def local_state(self) -> dict:
        if not self.compressed:
            return {}
        return {"sketch": self.sketch.state_dict(), "hot_map": self.hot_map.state_dict(), "steps": self.steps,
                "mass": self._mass, "due": list(self._due), "overhead_s": self.overhead_s,
                "sync_log": list(self.sync_log), "used": (self._used_sum, self._used_steps),
                "coverage": None if self._coverage is None else self._coverage.cpu()}

    def load_local_state(self, state: dict) -> None:
        if not state:
            return
        self.sketch.load_state_dict(state["sketch"])
        self.hot_map.load_state_dict(state["hot_map"])
        self.steps, self._mass, self.overhead_s = state["steps"], state["mass"], state["overhead_s"]
        self._due = deque(state["due"])
        self.sync_log = list(state["sync_log"])
        self._used_sum, self._used_steps = state.get("used", (0.0, 0))
        self._coverage = state.get("coverage")

    def rounds_in_flight(self) -> list[int]:
        """Rounds whose summaries every rank has sent but whose version is not applied yet."""
        return [round_ for round_, *_ in self._due]

    def apply_update(self, update: HotMapUpdate, rows: TableRows | None) -> None:
        """Apply one hot-set version: initialise promoted rows, then switch the map."""
        if rows is not None and update.promoted_keys.numel():
            self._init_hot_rows(rows, update.promoted_keys.cpu(), update.promoted_slots.cpu())
        self.hot_map.apply(update)

    def feature_of_keys(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index into ``self.compressed``, id) of each global sketch key."""
        starts = torch.tensor([self.key_offset[f.name] for f in self.compressed], dtype=torch.int64)
        fi = torch.searchsorted(starts, keys, right=True) - 1
        return fi, keys - starts[fi]

    def _init_hot_rows(self, rows: TableRows, keys: torch.Tensor, slots: torch.Tensor) -> None:
        """Each new hot row starts as the hash row (plus, for ids that were medium, the second hash
        row) the id was using; the fused optimizer's state for the hot row starts from zero."""
        fi, ids = self.feature_of_keys(keys)
        was_medium = (self.hot_map.is_medium(keys.to(self.hot_map.device)).cpu() if self.multi_level
                      else torch.zeros_like(keys, dtype=torch.bool))
        requests, places = [], []
        for i, f in enumerate(self.compressed):
            sel = (fi == i).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            requests.append((self.TABLE, self.hash_row(f.name, ids[sel])))
            places.append(sel)
            m = sel[was_medium[sel]]
            if m.numel():
                requests.append((f"hash2_{f.name}", hash_mod(ids[m], self.hash2_rows[f.name], seed=7)))
                places.append(m)
        values = torch.zeros((keys.numel(), self.dim), dtype=torch.float32)
        for place, got in zip(places, rows.read(requests)):
            values[place] += got
        rows.write(self.TABLE, slots, values)  # hot rows are the table's first rows
        rows.reset_state(self.TABLE, slots)

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
        log = self.sync_log
        return {
            **(self.memory_use() if self.compressed else {}),
            "hot_syncs": float(len(log)),
            "hot_map_version": float(self.hot_map.version),
            "sync_overhead_fraction": self.overhead_s / train_time_s if train_time_s > 0 else 0.0,
            "sync_wait_s": float(sum(e["wait_s"] for e in log)),
            "sync_merge_s": float(sum(e.get("merge_s", 0.0) for e in log)),
            "sync_bytes_sent": float(sum(e.get("bytes_sent", 0.0) for e in log)),
            "sync_mean_churn": float(sum(e.get("churn", 0.0) for e in log) / max(len(log), 1)),
            "sync_steps_in_flight": float(sum(e.get("steps_in_flight", 0) for e in log)),
        }


class CafeMLEmbedding(CafeEmbedding):
    """Multi-level CAFE: hot → unique row; medium → two hash rows summed; cold → one hash row."""

    multi_level = True
