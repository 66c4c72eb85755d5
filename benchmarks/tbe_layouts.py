"""Why CAFE's ROBE cold tier costs throughput: fbgemm's CPU lookup kernel (TBE), forward + backward
with its fused row-wise Adagrad, for the key layouts the tier could take.

One batch of 26 single-id features, ``--hot`` of the values hot (read one D-wide row), the rest
cold (read D/Z blocks of Z floats from one shared array). Layouts:

- ``hash``: 26 keys, one D-wide row per value (the baseline the issue compares against);
- ``cafe (D/Z pooled keys)``: today's layout, 26 hot keys + 26 x D/Z block keys, every key with a
  bag per sample (empty where a value takes the other route);
- ``cold-only bags``: as today, but block keys hold bags only for cold values (what a variable
  batch per key would give);
- ``one key per block``: D/Z block keys over all features (fewer keys, the same bags);
- ``sequence``: one unpooled key per feature with D/Z ids per cold value (TorchRec's
  EmbeddingCollection), concatenating blocks without extra keys.

Run: ``.venv/bin/python benchmarks/tbe_layouts.py`` (one thread; prints ms per step and the ratio
to ``hash``, median of ``--repeats``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    SplitTableBatchedEmbeddingBagsCodegen,
)

log = logging.getLogger("tbe_layouts")


def tbe(tables: list[tuple[int, int]], keys: list[int], pooling: PoolingMode = PoolingMode.SUM):
    return SplitTableBatchedEmbeddingBagsCodegen(
        [(rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU) for rows, dim in tables], feature_table_map=keys,
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, learning_rate=0.01, pooling_mode=pooling)


def offsets(lengths: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])


def layouts(batch: int, features: int, dim: int, z: int, rows: int, hot_share: float,
            seed: int) -> dict[str, Callable[[], None]]:
    """Each layout as a step: lookups for one batch, then backward (the fused optimizer updates)."""
    g = torch.Generator().manual_seed(seed)
    nb = dim // z
    hot = torch.rand(features * batch, generator=g) < hot_share
    cold = ~hot
    ncold = int(cold.sum())

    def ids(n: int) -> torch.Tensor:
        return torch.randint(0, rows, (n,), generator=g)

    def step(*lookups: tuple) -> Callable[[], None]:
        def run() -> None:
            sum(t(i, o).sum() for t, i, o in lookups).backward()
        return run

    ones = torch.ones(features * batch, dtype=torch.int64)
    main = (tbe([(rows, dim)], [0] * features), ids(int(hot.sum())), offsets(hot.long()))
    blocks_len = cold.long().repeat(nb)
    per_feature_cold = ncold // features
    return {
        "hash": step((tbe([(rows, dim)], [0] * features), ids(features * batch), offsets(ones))),
        "cafe (D/Z pooled keys)": step(main, (tbe([(rows, z)], [0] * (features * nb)), ids(ncold * nb),
                                             offsets(blocks_len))),
        "cold-only bags": step(main, (tbe([(rows, z)], [0] * (features * nb)), ids(per_feature_cold * features * nb),
                                      offsets(torch.ones(per_feature_cold * features * nb, dtype=torch.int64)))),
        "one key per block": step(main, (tbe([(rows, z)], [0] * nb), ids(ncold * nb), offsets(blocks_len))),
        "sequence": step(main, (tbe([(rows, z)], [0] * features, PoolingMode.NONE), ids(ncold * nb),
                                offsets(cold.long() * nb))),
    }


def timed(fn: Callable[[], None], steps: int) -> float:
    for _ in range(5):
        fn()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--features", type=int, default=26)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--z", type=int, default=4)
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--hot", type=float, default=0.6, help="share of values that are hot")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    handler = logging.StreamHandler()  # this script's lines only: fbgemm logs every table it builds at INFO
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    torch.set_num_threads(1)
    steps = layouts(a.batch, a.features, a.dim, a.z, a.rows, a.hot, seed=0)
    ms: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(a.repeats):  # interleaved, so a busy moment hits every layout alike
        for name, fn in steps.items():
            ms[name].append(timed(fn, a.steps))
    base = statistics.median(ms["hash"])
    log.info("batch %d, %d features, D=%d, Z=%d, hot share %.2f", a.batch, a.features, a.dim, a.z, a.hot)
    for name, xs in ms.items():
        m = statistics.median(xs)
        log.info("%-24s %7.2f ms/step  %4.2fx hash", name, m, m / base)


if __name__ == "__main__":
    main()
