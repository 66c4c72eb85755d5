"""Table factories: plain TorchRec tables whose initial rows are the same whichever rank holds
them and however many ranks there are (seeded per table from its name and ``train.seed``)."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import partial

import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec import EmbeddingBagConfig

from cafe_dist.embeddings.table_rows import _pieces


def seeded_uniform(weight: torch.Tensor, bound: float, seed: int) -> torch.Tensor:
    """TorchRec's default init (uniform ±sqrt(1/rows)), from a generator seeded per table, so a
    table starts the same whichever rank holds it and however many ranks there are."""
    g = torch.Generator(device=weight.device).manual_seed(seed)
    with torch.no_grad():
        return weight.uniform_(-bound, bound, generator=g)


def segmented_uniform(weight: torch.Tensor | ShardedTensor, segments: tuple[tuple[int, float], ...],
                      seed: int, logical: Callable[[torch.Tensor], torch.Tensor] | None = None
                      ) -> torch.Tensor | ShardedTensor:
    """:func:`seeded_uniform` for a table made of consecutive row segments, each ``(rows, bound)``
    initialised as if it were a table of its own (CAFE keeps hot rows and every feature's hash rows
    in one table). ``logical``: the segments' row of each of the table's rows, where a layout
    spreads them (CAFE's ``CafeLayout.logical``), so each row takes the bound of its logical row's
    segment. Works on whatever pieces of the table this rank holds."""
    ends = torch.tensor([rows for rows, _ in segments]).cumsum(0)
    bounds = torch.tensor([bound for _, bound in segments], dtype=torch.float32)
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for r0, _, local in _pieces(weight):
            if local.numel() == 0:  # a rank without rows of this table
                continue
            rows = torch.arange(r0, r0 + local.shape[0], dtype=torch.int64)
            segment = torch.searchsorted(ends, rows if logical is None else logical(rows), right=True)
            bound = bounds[segment].unsqueeze(1).to(local.device)
            local.copy_(torch.rand(local.shape, generator=g).to(local.device).mul_(2 * bound).sub_(bound))
    return weight


def _seed(name: str) -> int:
    return (zlib.crc32(name.encode()) ^ torch.initial_seed()) % 2**63  # train.seed reaches here


def table(name: str, rows: int, dim: int, features: list[str]) -> EmbeddingBagConfig:
    rows = max(int(rows), 1)
    return EmbeddingBagConfig(name=name, embedding_dim=dim, num_embeddings=rows, feature_names=features,
                              init_fn=partial(seeded_uniform, bound=(1.0 / rows) ** 0.5, seed=_seed(name)))


def segmented_table(name: str, segment_rows: list[int], dim: int, features: list[str],
                    logical: Callable[[torch.Tensor], torch.Tensor] | None = None) -> EmbeddingBagConfig:
    """One table holding consecutive segments of ``segment_rows`` rows, each initialised with the
    bound a table of that many rows would get (``logical``: where the rows are spread, as :func:`segmented_uniform`)."""
    segments = tuple((max(int(r), 1), (1.0 / max(int(r), 1)) ** 0.5) for r in segment_rows)
    return EmbeddingBagConfig(name=name, embedding_dim=dim, num_embeddings=sum(r for r, _ in segments),
                              feature_names=features,
                              init_fn=partial(segmented_uniform, segments=segments, seed=_seed(name), logical=logical))
