"""The routing engine every method shares, so DMP can shard any of them.

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

:class:`Router` is the engine, mixed into :class:`~cafe_dist.embeddings.base.CompressedEmbedding`:
it reads the method's ``names``, ``compressed``, ``ebc``, ``routes``, ``route_dims``,
``block_suffixes`` and ``merge``, and keeps only a cache of pooled-key layouts (``_layouts``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn
from torchrec import KeyedJaggedTensor, KeyedTensor
from torchrec.streamable import Pipelineable


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


def _tensors(*items: Any) -> list[torch.Tensor]:
    """The tensor fields of dataclass ``items`` (None fields left out)."""
    return [t for item in items for t in (getattr(item, f.name) for f in fields(item)) if isinstance(t, torch.Tensor)]


class Remapped(Pipelineable):
    """One batch after the id transform: its ``lookups`` for the tables, and its ``values`` and
    ``routes``, which :meth:`Router.combine` needs. TorchRec's train pipeline computes it a batch
    ahead, on its input stream, and hands it to the step on the default stream: hence ``to`` and
    ``record_stream``."""

    def __init__(self, lookups: KeyedJaggedTensor, values: Values, routes: list[Route]) -> None:
        self.lookups, self.values, self.routes = lookups, values, routes

    def to(self, device: torch.device, non_blocking: bool = False) -> Remapped:
        def move(item):
            return replace(item, **{f.name: getattr(item, f.name).to(device, non_blocking=non_blocking)
                                    for f in fields(item) if isinstance(getattr(item, f.name), torch.Tensor)})

        return Remapped(self.lookups.to(device, non_blocking=non_blocking), move(self.values),
                        [move(r) for r in self.routes])

    def record_stream(self, stream: torch.Stream) -> None:
        self.lookups.record_stream(stream)
        for t in _tensors(self.values, *self.routes):
            t.record_stream(stream)


class RemapStage(nn.Module):
    """The id transform as a module of its own, holding no parameters or buffers (its method's
    state stays on the method): TorchRec's ``TrainPipelineSparseDist`` with ``pipeline_postproc``
    runs such a module for the next batch, before its input distribution, while this batch trains.
    ``index`` is the training batch's number (None outside training): see
    :meth:`Router.before_remap`."""

    def __init__(self, router: Router) -> None:
        super().__init__()
        object.__setattr__(self, "_router", router)  # not a submodule: the method owns this stage

    def forward(self, kjt: KeyedJaggedTensor, index: int | None = None) -> Remapped:
        return self._router.remapped(kjt, index)


class CombineStage(nn.Module):
    """:meth:`Router.combine` as a module, so the pipeline's trace (torch.fx) treats it as one
    call instead of tracing the split of the pooled values."""

    def __init__(self, router: Router) -> None:
        super().__init__()
        object.__setattr__(self, "_router", router)

    def forward(self, pooled: KeyedTensor, remapped: Remapped) -> torch.Tensor:
        return self._router.combine(pooled, remapped.values, remapped.routes)


BLOCKS = "@blocks"  # the group of the block routes (see CompressedEmbedding.block_suffixes)
GROUP = "group"  # combine's piece of the pooled values that is a whole group: (GROUP, suffix or BLOCKS)



class Router:
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

    def before_remap(self, index: int) -> None:
        """Called with a training batch's number (1-based, the run's step it trains in) before its
        ids are remapped. A method whose map changes between steps applies here the changes due at
        that batch, so that a pipeline, which remaps batch t+1 before step t's between-steps work,
        maps every batch as the plain loop does (CAFE: :meth:`CafeEmbedding.before_remap`)."""

    def remapped(self, kjt: KeyedJaggedTensor, index: int | None = None) -> Remapped:
        """The id transform of one batch (``index``: its number, when training; see :meth:`before_remap`).
        On a GPU a pipeline runs it on its input stream, so it first waits for the work already queued
        on the default stream: the between-steps work that wrote the state it reads (CAFE's map)."""
        if index is not None:
            if kjt.device().type == "cuda":
                torch.cuda.current_stream(kjt.device()).wait_stream(torch.cuda.default_stream(kjt.device()))
            self.before_remap(index)
        return Remapped(*self.transform(kjt))

    def forward(self, kjt: KeyedJaggedTensor, index: int | None = None) -> torch.Tensor:
        """Three calls the train pipeline's trace can follow: the id transform (a parameter-free
        module it may run a batch ahead), the sharded lookups, the combine step."""
        remapped = self.remap_stage(kjt, index)
        return self.combine_stage(self.ebc(remapped.lookups), remapped)
