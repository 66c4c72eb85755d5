"""The shape every embedding method shares, so DMP can shard any of them.

A method rewrites the input ``KeyedJaggedTensor`` (one key per original feature) into lookups on
ordinary ``EmbeddingBagConfig`` tables held by one ``EmbeddingBagCollection``; DMP shards that EBC
with the fbgemm kernels and fused optimizers like any other. ``combine`` turns the pooled lookups
back into one (B, F, D) tensor for the interaction layer.

The rewrite is expressed as *routes*: each route sends some of the input values (a mask), rewritten
(new row numbers), to output keys ``<feature><suffix>`` for a subset of features. The main route
(suffix ``""``) keeps the original key names. Features the budget leaves uncompressed always travel
unchanged on the main route to their own full table ``t_<feature>``.

Routes that each read one block of a value's vector (ROBE's D/Z blocks) are named by
:meth:`CompressedEmbedding.block_suffixes`: ``combine`` hands them to ``merge`` side by side, as one
group of the compressed features (a view of the pooled output when the table lists each feature's
block keys together, as ROBE's and CAFE's arrays do).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, KeyedTensor

from cafe_dist.embeddings.sizing import Budget, plan_budget
from cafe_dist.embeddings.spec import FLOAT_BYTES, FeatureSpec
from cafe_dist.embeddings.table_rows import _pieces


@dataclass(frozen=True)
class Route:
    suffix: str  # output keys are f"{feature}{suffix}"; "" is the main route
    features: torch.Tensor  # (F,) bool: which features have a key on this route
    values: torch.Tensor  # (N,) row of each input value on this route
    mask: torch.Tensor | None = None  # (N,) bool: which values take this route (None: all)
    # positions of the values on this route, ascending; ``values`` then holds their rows alone and
    # ``mask`` is not read. Routes that share one ``at`` tensor share its bag counts: a method that
    # knows its values computes their rows for them only (and the transform selects nothing)
    at: torch.Tensor | None = None


@dataclass(frozen=True)
class Values:
    """Per-value bookkeeping of one input batch (values are key-major, as in every KJT)."""

    ids: torch.Tensor  # (N,) int64
    feature: torch.Tensor  # (N,) feature index of each value
    segment: torch.Tensor  # (N,) bag index f * B + b of each value
    lengths: torch.Tensor  # (F, B)
    batch_size: int

    def take(self, at: torch.Tensor) -> Values:
        """The values at positions ``at`` (``lengths`` stays the whole batch's)."""
        return Values(self.ids.index_select(0, at), self.feature.index_select(0, at),
                      self.segment.index_select(0, at), self.lengths, self.batch_size)


def seeded_uniform(weight: torch.Tensor, bound: float, seed: int) -> torch.Tensor:
    """TorchRec's default init (uniform ±sqrt(1/rows)), from a generator seeded per table, so a
    table starts the same whichever rank holds it and however many ranks there are."""
    g = torch.Generator(device=weight.device).manual_seed(seed)
    with torch.no_grad():
        return weight.uniform_(-bound, bound, generator=g)


def segmented_uniform(weight: torch.Tensor | ShardedTensor, segments: tuple[tuple[int, float], ...],
                      seed: int) -> torch.Tensor | ShardedTensor:
    """:func:`seeded_uniform` for a table made of consecutive row segments, each ``(rows, bound)``
    initialised as if it were a table of its own (CAFE keeps hot rows and every feature's hash rows
    in one table). Works on whatever pieces of the table this rank holds."""
    starts = [0]
    for rows, _ in segments:
        starts.append(starts[-1] + rows)
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for r0, _, local in _pieces(weight):
            for (rows, bound), lo in zip(segments, starts):
                a, b = max(lo, r0), min(lo + rows, r0 + local.shape[0])
                if a < b:
                    part = local[a - r0:b - r0]
                    part.copy_(torch.rand(part.shape, generator=g).mul_(2 * bound).sub_(bound))
    return weight


def _seed(name: str) -> int:
    return (zlib.crc32(name.encode()) ^ torch.initial_seed()) % 2**63  # train.seed reaches here


def table(name: str, rows: int, dim: int, features: list[str]) -> EmbeddingBagConfig:
    rows = max(int(rows), 1)
    return EmbeddingBagConfig(name=name, embedding_dim=dim, num_embeddings=rows, feature_names=features,
                              init_fn=partial(seeded_uniform, bound=(1.0 / rows) ** 0.5, seed=_seed(name)))


def segmented_table(name: str, segment_rows: list[int], dim: int, features: list[str]) -> EmbeddingBagConfig:
    """One table holding consecutive segments of ``segment_rows`` rows, each initialised with the
    bound a table of that many rows would get."""
    segments = tuple((max(int(r), 1), (1.0 / max(int(r), 1)) ** 0.5) for r in segment_rows)
    return EmbeddingBagConfig(name=name, embedding_dim=dim, num_embeddings=sum(r for r, _ in segments),
                              feature_names=features,
                              init_fn=partial(segmented_uniform, segments=segments, seed=_seed(name)))


BLOCKS = "@blocks"  # the group of the block routes (see CompressedEmbedding.block_suffixes)
GROUP = "group"  # combine's piece of the pooled values that is a whole group: (GROUP, suffix or BLOCKS)


class MethodOptions(BaseModel):
    """A method's own settings: the YAML section named after it (see ``CompressedEmbedding.options``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CompressedEmbedding(nn.Module):
    """Base class. Subclasses add their tables in ``method_tables`` and define ``routes``/``merge``;
    everything else about a method is declared here, on its class, and read by whoever needs it
    (config, launcher, trainer, tracking) without knowing which method it is."""

    #: the method's own settings, validated from the YAML section ``section``; None: it has none
    options: ClassVar[type[MethodOptions] | None] = None
    #: the YAML section of those settings (None: the method's registry name); cafe_ml shares cafe's
    section: ClassVar[str | None] = None

    #: which input column a method consumes: contiguous vocabulary ids ("idx") or raw values ("raw")
    input_kind: ClassVar[str] = "idx"
    #: whether a run of this method needs a hot-set coordinator actor (:mod:`cafe_dist.embeddings.cafe.coordinator`)
    needs_coordinator: ClassVar[bool] = False
    #: :meth:`after_step` statistics that are a level (the latest value counts), not a count to sum,
    #: and their name in the run's result
    level_stats: ClassVar[dict[str, str]] = {}
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
        self.register_buffer("compressed_index", (~self.is_full).nonzero().squeeze(1), persistent=False)
        self._layouts: dict[tuple[str, ...], tuple[list[int], list[Any]]] = {}

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

    def merge_local_states(self, states: list[dict[str, Any]], world_size: int) -> dict[str, Any]:
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

    def connect(self, run_name: str, world_size: int) -> None:
        """Join the run's coordinator (called on every rank when :attr:`needs_coordinator`)."""

    def rounds_in_flight(self) -> list[int]:
        """Coordinator rounds sent but not applied yet (a checkpoint keeps their merges)."""
        return []

    def sync_summary(self, train_time_s: float) -> dict[str, float]:
        """The method's own figures for the run's result (every rank calls it: it may reduce)."""
        return {}

    # ---- the shared machinery -------------------------------------------------------------
    def values_of(self, kjt: KeyedJaggedTensor) -> Values:
        nf, b = len(self.names), kjt.stride()
        lengths = kjt.lengths().view(nf, b)
        ids = kjt.values().to(torch.int64)
        segment = torch.repeat_interleave(torch.arange(nf * b, device=ids.device), lengths.reshape(-1),
                                          output_size=ids.numel())
        feature = torch.repeat_interleave(torch.arange(nf, device=ids.device), lengths.sum(1),
                                          output_size=ids.numel())
        return Values(ids, feature, segment, lengths, b)

    def transform(self, kjt: KeyedJaggedTensor) -> tuple[KeyedJaggedTensor, Values, list[Route]]:
        """The lookups ``kjt`` becomes (one key per feature and route), with the batch's values and
        routes, which :meth:`combine` needs: nothing is kept on the module between calls."""
        if list(kjt.keys()) != self.names:
            raise ValueError(f"expected features {self.names}, got {list(kjt.keys())}")
        v = self.values_of(kjt)
        routes = self.routes(v)
        keys, values, lengths = [], [], []
        nf, b = len(self.names), v.batch_size
        counted: dict[tuple[int, tuple[bool, ...]], torch.Tensor] = {}  # lengths, per `at` and features on
        for r in routes:
            on = r.features.tolist()
            keys += [n + r.suffix for n, o in zip(self.names, on) if o]
            if r.at is None and r.mask is None and all(on):  # every value, as it came: the input's lengths hold
                values.append(r.values)
                lengths.append(v.lengths.reshape(-1).to(torch.int32))
                continue
            if r.at is not None:
                at = r.at
                values.append(r.values)
            else:
                keep = r.features.index_select(0, v.feature)
                if r.mask is not None:
                    keep &= r.mask
                at = keep.nonzero().squeeze(1)  # once: index_select by it beats a boolean mask per tensor
                values.append(r.values.index_select(0, at))
            shared = (id(at), tuple(on))  # by value: each route may build its own features mask
            if shared not in counted:
                counts = torch.bincount(v.segment.index_select(0, at), minlength=nf * b).to(torch.int32)
                counted[shared] = counts.view(nf, b)[r.features].reshape(-1)
            lengths.append(counted[shared])
        kjt = KeyedJaggedTensor(keys=keys, values=torch.cat(values), lengths=torch.cat(lengths), stride=b)
        return kjt, v, routes

    def _pieces(self, pooled: KeyedTensor) -> tuple[list[int], list[Any]]:
        """How :meth:`combine` splits the pooled values: (widths, names) of consecutive column
        pieces. A group whose keys lie side by side (a route's in feature order, the block routes'
        feature by feature) is one piece named ``(GROUP, suffix)`` (or ``(GROUP, BLOCKS)``); every
        other key is a piece of its own, named by the key. Cached per pooled key order."""
        keys = tuple(pooled.keys())
        found = self._layouts.get(keys)
        if found is not None:
            return found
        offsets, off = {}, 0
        for k, n in zip(keys, pooled.length_per_key()):
            offsets[k] = off
            off += n

        def side_by_side(order: list[tuple[str, int]]) -> int | None:
            """First column of the keys of ``order`` (key, width) when they lie side by side."""
            first = offsets.get(order[0][0]) if order else None
            col = first
            for k, d in order:
                if col is None or offsets.get(k) != col:
                    return None
                col += d
            return first

        dims, blocks = self.route_dims(), self.block_suffixes()
        wanted = {(GROUP, suffix): [(n + suffix, d) for n in self.names]
                  for suffix, d in dims.items() if suffix not in blocks}
        if blocks:
            wanted[(GROUP, BLOCKS)] = [(f.name + s, dims[s]) for f in self.compressed for s in blocks]
        runs = {}  # first column → (group, width) of each group that lies side by side
        for group, order in wanted.items():
            first = side_by_side(order)
            if first is not None:
                runs[first] = (group, sum(d for _, d in order))
        sizes, names, col, end = [], [], 0, 0
        for k, n in zip(keys, pooled.length_per_key()):
            if col >= end:  # not inside a group's run
                group, width = runs.get(col, (k, n))
                names.append(group)
                sizes.append(width)
                end = col + width
            col += n
        found = self._layouts[keys] = (sizes, names)
        return found

    def combine(self, pooled: KeyedTensor, v: Values, routes: list[Route]) -> torch.Tensor:
        """The pooled lookups as one (B, F, dim) group per route (zeros where a feature has no key
        on it), and the block routes as one group of the compressed features, handed to
        :meth:`merge`. The pooled values are split once (its backward is one concatenation of
        gradients): a group is a piece of that split where its keys lie side by side, else a stack
        of its keys' pieces. (Slicing the pooled values per group would zero-fill a gradient of all
        of them per group in backward.)"""
        b, nf = v.batch_size, len(self.names)
        sizes, names = self._pieces(pooled)
        pieces = dict(zip(names, pooled.values().split(sizes, dim=1)))
        groups, zeros = {}, {}
        blocks = self.block_suffixes()
        for suffix, d in self.route_dims().items():
            if suffix in blocks:
                continue
            run = pieces.get((GROUP, suffix))
            if run is not None:
                groups[suffix] = run.view(b, nf, d)
                continue
            if d not in zeros:
                zeros[d] = pooled.values().new_zeros(b, d)
            groups[suffix] = torch.stack([pieces.get(n + suffix, zeros[d]) for n in self.names], dim=1)
        if blocks:
            run = pieces.get((GROUP, BLOCKS))
            if run is None:
                run = torch.cat([pieces[f.name + s] for f in self.compressed for s in blocks], dim=1)
            groups[BLOCKS] = run.view(b, len(self.compressed), -1)
        return self.merge(groups, v, routes)

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        lookups, v, routes = self.transform(kjt)
        return self.combine(self.ebc(lookups), v, routes)

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


class FullEmbedding(CompressedEmbedding):
    """Uncompressed: one table per feature, sized exactly by the train vocabulary."""

    def __init__(self, features: list[FeatureSpec], dim: int, ratio: float = 1.0,
                 device: torch.device | None = None) -> None:
        super().__init__(features, dim, 1.0, device)
