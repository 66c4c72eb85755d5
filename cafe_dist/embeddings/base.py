"""The contract of an embedding method: what a method declares (its options, input kind, run
service), defines (its tables, routes and merge), keeps (local and serving state) and is measured
by (memory accounting). The routing engine that turns any method's routes into TorchRec lookups
and back is :mod:`cafe_dist.embeddings.routing`; the table factories are
:mod:`cafe_dist.embeddings.tables`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

from cafe_dist.embeddings.routing import CombineStage, RemapStage, Route, Router, Values
from cafe_dist.embeddings.service import RunService
from cafe_dist.embeddings.sizing import Budget, plan_budget
from cafe_dist.embeddings.spec import FLOAT_BYTES, VALUE_BITS, VALUE_BYTES, FeatureSpec
from cafe_dist.embeddings.tables import table


class MethodOptions(BaseModel):
    """A method's own settings: the YAML section named after it (see ``CompressedEmbedding.options``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> MethodOptions:
        """The settings a checkpoint's manifest or an export's ``model.json`` recorded. A method whose
        new setting changes what saved tables mean overrides this, so that records written before the
        setting existed keep the meaning they were written with."""
        return cls.model_validate(saved)


class CompressedEmbedding(Router, nn.Module):
    """Base class. Subclasses add their tables in ``method_tables`` and define ``routes``/``merge``;
    everything else about a method is declared here, on its class, and read by whoever needs it
    (config, launcher, trainer, tracking) without knowing which method it is."""

    #: the method's own settings, validated from the YAML section ``section``; None: it has none
    options: ClassVar[type[MethodOptions] | None] = None
    #: the YAML section of those settings (None: the method's registry name); cafe_ml shares cafe's
    section: ClassVar[str | None] = None

    #: a process a run of this method needs beside its workers (:mod:`cafe_dist.embeddings.service`;
    #: CAFE's hot-set coordinator), or None
    service: ClassVar[type[RunService] | None] = None
    #: whether the method keeps a hot set (ids with rows of their own: ``hot_map``, ``hot_rows``,
    #: ``hot_ids()``), which the drift probe follows and ``cafe-dist hot`` lists
    keeps_hot_set: ClassVar[bool] = False
    #: :meth:`after_step` statistics that are a level (the latest value counts), not a count to sum,
    #: and their name in the run's result
    level_stats: ClassVar[dict[str, str]] = {}
    #: whether batch t+1's ids may be remapped before step t's :meth:`after_step` (TorchRec's train
    #: pipeline does, to overlap its input distribution with step t): true when the remap reads
    #: nothing that :meth:`after_step` changes, or when the method applies its changes by batch
    #: number (:meth:`Router.before_remap`); false for MCH, whose remappers learn from each batch
    #: as they remap it and evict between steps
    pipelineable: ClassVar[bool] = True
    #: the method's own MLflow plots: file name → panels, each a tuple of step metrics drawn together
    plots: ClassVar[dict[str, tuple[tuple[str, ...], ...]]] = {}
    #: seconds of :meth:`after_step` so far, in total and by phase; None: the method has no such work
    overhead_s: float | None = None
    phase_s: dict[str, float] | None = None

    def __init__(self, features: list[FeatureSpec], dim: int, ratio: float = 1.0,
                 device: torch.device | None = None) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"embedding.dim must be a multiple of 4 (fbgemm kernels need it), got {dim}")
        self.features = list(features)
        self.names = [f.name for f in features]
        self.dim = dim
        self.budget: Budget = plan_budget(self.features, dim, ratio)
        full = set(self.budget.full)
        self.register_buffer("is_full", torch.tensor([f.name in full for f in features]), persistent=False)
        self.compressed = [f for f in features if f.name not in full]
        self.tables = [table(f"t_{f.name}", f.cardinality, dim, [f.name])
                       for f in features if f.name in full]
        self.tables += self.method_tables()
        self.ebc = EmbeddingBagCollection(tables=self.tables, device=device or torch.device("meta"))
        self.remap_stage, self.combine_stage = RemapStage(self), CombineStage(self)  # see Router.forward
        self.register_buffer("compressed_index", (~self.is_full).nonzero().squeeze(1), persistent=False)
        self._layouts: dict[tuple[str, ...], tuple[list[int], list[Any]]] = {}
        self.known: dict[str, np.ndarray] | None = None  # set_known_values; None: not given yet

    # ---- raw values of the uncompressed features -------------------------------------------
    def full_names(self) -> list[str]:
        """Features with a table of their own: their rows come from their list of values."""
        return list(self.budget.full)

    def set_known_values(self, values: dict[str, np.ndarray]) -> None:
        """The raw values that own a row of each uncompressed table (``values[f]``: sorted, distinct;
        row = position + 1, row 0 for every other value). Every input reaches a method as raw
        values, so a table of its own needs this list; compressed features need none."""
        names = self.full_names()
        missing = [f for f in names if f not in values]
        if missing:
            raise ValueError(f"no list of values for feature(s) {', '.join(missing)}, which keep a table of their own")
        self.known = {f: np.asarray(values[f], np.int64) for f in names}
        keys, start = [], np.zeros(len(self.features), np.int64)
        for i, f in enumerate(self.features):
            start[i] = sum(len(k) for k in keys)
            if f.name in self.known:
                v = self.known[f.name]
                if len(v) > f.cardinality - 1:
                    raise ValueError(f"feature {f.name}: {len(v):,} listed values for a table of {f.cardinality:,} rows")
                keys.append((np.int64(i) << VALUE_BITS) | v)
        self.register_buffer("known_keys", torch.from_numpy(np.concatenate(keys) if keys else np.zeros(0, np.int64)),
                             persistent=False)
        self.register_buffer("known_start", torch.from_numpy(start), persistent=False)

    def values_of(self, kjt) -> Values:
        """The batch's values, those of uncompressed features turned into their table's rows."""
        v = super().values_of(kjt)
        if not self.budget.full:
            return v
        if self.known is None:
            raise RuntimeError("set_known_values was not called: the uncompressed features cannot map raw values")
        n = self.known_keys.numel()
        if self.known_keys.device != v.ids.device:
            self.known_keys, self.known_start = self.known_keys.to(v.ids.device), self.known_start.to(v.ids.device)
        if n == 0:
            return Values(torch.where(self.is_full.index_select(0, v.feature), 0, v.ids), v.feature, v.segment,
                          v.lengths, v.batch_size)
        key = (v.feature << VALUE_BITS) | v.ids
        pos = torch.searchsorted(self.known_keys, key).clamp_(max=n - 1)
        row = torch.where(self.known_keys.index_select(0, pos) == key,
                          pos - self.known_start.index_select(0, v.feature) + 1, 0)
        return Values(torch.where(self.is_full.index_select(0, v.feature), row, v.ids), v.feature, v.segment,
                      v.lengths, v.batch_size)

    @classmethod
    def build(cls, features: list[FeatureSpec], dim: int, ratio: float, device: torch.device | None,
              options: MethodOptions | None) -> CompressedEmbedding:
        """The module from validated ``options`` (by default: as keyword arguments)."""
        return cls(features, dim, ratio, device, **(options.model_dump() if options is not None else {}))

    # ---- what subclasses define -----------------------------------------------------------
    def method_tables(self) -> list[EmbeddingBagConfig]:
        return []

    def routes(self, v: Values) -> list[Route]:
        return [Route("", torch.ones_like(self.is_full), v.ids)]

    def merge(self, groups: dict[str, torch.Tensor], v: Values, routes: list[Route]) -> torch.Tensor:
        """Pooled lookups per route, each (B, F, dim of that route) with zeros where a feature has
        no key on it → (B, F, D). ``v`` and ``routes`` are this batch's, from :meth:`routes`."""
        return groups[""]

    def route_dims(self) -> dict[str, int]:
        return {"": self.dim}

    def block_suffixes(self) -> tuple[str, ...]:
        """Routes whose lookups are consecutive blocks of one vector (on the compressed features):
        :meth:`merge` gets them as one group ``groups[BLOCKS]`` of (B, compressed features, their
        dims summed) instead of one group each."""
        return ()

    def after_step(self, rows: Any = None) -> dict[str, float]:
        """Between steps (after the optimizer): apply state changes to the tables; returns stats."""
        return {}

    def state_checksum(self) -> int | None:
        """A digest of state every rank must hold identically (hot sets, id maps); None if none."""
        return None

    def local_state(self) -> dict[str, Any]:
        """This rank's state outside the tables (sketches, id maps, counters), for checkpoints."""
        return {}

    def load_local_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`local_state` returned."""

    def reshard_local_states(self, states: list[dict[str, Any]], world_size: int) -> dict[str, Any]:
        """Elastic resume on ``world_size`` workers: this rank's local state from every old rank's
        (rank order). By default the state is the same on every rank (id maps kept in step), so
        rank 0's; a method with per-rank state (CAFE's sketches) combines them."""
        return states[0]

    @classmethod
    def prepare_data(cls, data_dir: str, meta: Any, options: MethodOptions | None) -> MethodOptions | None:
        """On the driver, before any worker starts: compute what the method learns from the dataset
        (``meta``: its DatasetMeta) once, and return the options every worker builds with."""
        return options

    @classmethod
    def values_file(cls, data_dir: str, meta: Any, options: MethodOptions | None) -> str | None:
        """On the driver, after :meth:`prepare_data`: the file listing the raw values that may own a
        row of an uncompressed table (:mod:`cafe_dist.data.vocabulary`); by default the dataset's,
        which lists its small features. None: no feature is listed, all are hashed."""
        from cafe_dist.data.schema import values_file

        return values_file(data_dir)

    @classmethod
    def portable_options(cls, options: MethodOptions | None,
                         move: Callable[[str], str]) -> MethodOptions | None:
        """``options`` with every file they name passed through ``move``: an export copies the file
        into the model and gets its name there; loading the model turns that name into a path."""
        return options

    @classmethod
    def planning_options(cls, options: MethodOptions | None) -> MethodOptions | None:
        """``options`` for sizing the method's tables without its data (``cafe-dist plan``, where
        files the settings name may not exist yet)."""
        return options

    def serving_state(self) -> dict[str, Any]:
        """What inference needs beside the tables to map an id to rows (hot map, id maps), without
        training-only state (sketches, counters): an exported model keeps exactly this."""
        return self.local_state()

    def load_serving_state(self, state: dict[str, Any]) -> None:
        self.load_local_state(state)

    def bind_data(self, train_rows: int) -> None:
        """Learn the size of an epoch (rows of the train split), for settings given per epoch."""

    def sync_summary(self, train_time_s: float) -> dict[str, float]:
        """The method's own figures for the run's result (every rank calls it: it may reduce)."""
        return {}

    # ---- memory accounting --------------------------------------------------------------------
    def table_bytes(self) -> int:
        return sum(t.num_embeddings * t.embedding_dim * FLOAT_BYTES for t in self.tables)

    def aux_bytes(self) -> int:
        """Bytes of everything beside the storage tables (sketches, id maps, per-id scalars)."""
        return 0

    def resolved_options(self) -> dict[str, Any]:
        """The settings this method derived because the job left them unset (or a preset set them),
        as it resolved them: what the run's MLflow params show instead of "none"; None: a setting of
        its section this method does not use (left out of the params)."""
        return {}

    def hot_row_places(self, lookups: np.ndarray, world_size: int) -> tuple[str, np.ndarray] | None:
        """Methods with a hot set: (table, the row the method would give each of ids whose expected
        lookups are ``lookups``, strongest first, on ``world_size`` workers), which ``plan`` weighs each
        rank's share of the hot traffic by; None: no hot rows."""
        return None

    def values_bytes(self) -> int:
        """The lists of values of the uncompressed features (8 B a value)."""
        return VALUE_BYTES * sum(f.cardinality - 1 for f in self.features if f.name in set(self.budget.full))

    def embedding_bytes(self) -> int:
        return self.table_bytes() + self.aux_bytes() + self.values_bytes()

    def full_embedding_bytes(self) -> int:
        return sum(f.cardinality * self.dim * FLOAT_BYTES for f in self.features)

    def allocate(self, fit: Callable[[FeatureSpec, float], tuple[Any, float]],
                 share: float = 1.0) -> dict[str, Any]:
        """``fit(feature, bytes available) -> (its structure, bytes it uses)`` over the compressed
        features, each offered ``share`` of its budget plus what rounding left unused before it,
        so the total stays within one row of the budget."""
        out, carry = {}, 0.0
        for f in self.compressed:
            avail = share * self.budget.per_feature_bytes + carry
            out[f.name], used = fit(f, avail)
            carry = avail - used
        return out

    def allocate_rows(self, share: float = 1.0, row_bytes: float | None = None) -> dict[str, int]:
        """Rows per compressed feature when each row costs ``row_bytes`` (default: one embedding
        row), via :meth:`allocate`, so rounding is carried over; at least one row each."""
        unit = row_bytes or self.dim * FLOAT_BYTES

        def fit(f: FeatureSpec, avail: float) -> tuple[int, float]:
            rows = max(1, int(avail // unit))
            return rows, rows * unit

        return self.allocate(fit, share)

    def rows_for(self, nbytes: float, dim: int | None = None) -> int:
        """Whole rows of width ``dim`` that fit in ``nbytes`` (at least one)."""
        return max(1, int(nbytes // ((dim or self.dim) * FLOAT_BYTES)))

    def per_value(self, per_feature: list[int] | torch.Tensor, v: Values) -> torch.Tensor:
        """Expand a per-feature quantity (rows of its table, say) to one entry per value. The small
        per-feature tensor is built once per distinct list and device, not on every step."""
        if isinstance(per_feature, torch.Tensor):
            return per_feature.to(v.ids.device).index_select(0, v.feature)
        cache = self.__dict__.setdefault("_per_value_cache", {})
        key = (tuple(per_feature), v.ids.device)
        t = cache.get(key)
        if t is None:
            t = cache[key] = torch.as_tensor(per_feature, dtype=torch.int64, device=v.ids.device)
        return t.index_select(0, v.feature)  # several times faster than t[v.feature] on CPU


class FullOptions(MethodOptions):
    """``full``'s vocabulary (:mod:`cafe_dist.data.vocabulary`): with neither setting, the dataset's
    own list of values when it lists every feature."""

    max_ids_per_feature: int | None = Field(None, gt=0)  # MLPerf's cap: the most frequent values keep a row
    min_count: int = Field(1, ge=1)  # train occurrences a value needs for a row of its own


class FullEmbedding(CompressedEmbedding):
    """Uncompressed: one table per feature, a row per value of its vocabulary (+ row 0 for the rest)."""

    options = FullOptions

    def __init__(self, features: list[FeatureSpec], dim: int, ratio: float = 1.0,
                 device: torch.device | None = None, max_ids_per_feature: int | None = None,
                 min_count: int = 1) -> None:
        if max_ids_per_feature is not None:  # (sizes before the vocabulary exists: plan)
            features = [replace(f, cardinality=min(f.cardinality, max_ids_per_feature + 1)) for f in features]
        features = [replace(f, listed=True) for f in features]  # every feature gets a vocabulary
        super().__init__(features, dim, 1.0, device)

    def set_known_values(self, values: dict[str, np.ndarray]) -> None:
        """A vocabulary lists no value of a feature whose values all fell below ``min_count``:
        they all read row 0."""
        super().set_known_values({f: values.get(f, np.zeros(0, np.int64)) for f in self.names})

    @classmethod
    def values_file(cls, data_dir: str, meta: Any, options: MethodOptions | None) -> str | None:
        from cafe_dist.data.schema import values_file
        from cafe_dist.data.vocabulary import build_vocabulary

        opts = options if isinstance(options, FullOptions) else FullOptions()
        listed = values_file(data_dir)
        every = all(meta.counted_exactly(f) for f in meta.sparse_features)
        if listed is not None and every and opts.max_ids_per_feature is None and opts.min_count == 1:
            return listed
        return build_vocabulary(data_dir, meta, opts.max_ids_per_feature, opts.min_count)
