"""One training step of a method's embedding module alone, under DMP in one process: the id
transform, the sharded lookups (fbgemm, fused row-wise Adagrad), ``combine``, backward, and for CAFE
the scoring hook and the sketch insert. What the routing costs, without the rest of the trainer.

Why beside ``cafe-dist bench throughput``: that bench times whole runs through Ray, and on this
2-core VM one run's speed moves by 10-20 % against the next (the ratio of two runs of the same code
ranged 0.55-1.03), far more than a change to the routing. Here the methods run in one process, in
interleaved rounds of ``--steps`` steps, and the fastest round of each is compared (the least
disturbed one), so a change of a few percent shows.

Data: the first batches of the throughput bench's synthetic dataset (generated once, as the bench
does). CAFE's hot set is the most frequent compressed ids of those batches, as many as it has
slots (what a warmed-up run holds).

Run: ``.venv/bin/python benchmarks/embedding_step.py`` (one thread; ``--methods``, ``--ratio``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torchrec import KeyedJaggedTensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))  # the DMP wiring the tests use (dmp_helpers.shard)

log = logging.getLogger("embedding_step")


def batches(data_dir: Path, batch_size: int, n: int) -> tuple[list, dict, list[KeyedJaggedTensor]]:
    """The features (as a run sees them), their lists of values, and ``n`` batches of raw values."""
    from cafe_dist.data.schema import values_file
    from cafe_dist.data.vocabulary import read_values
    from cafe_dist.embeddings.spec import FeatureSpec

    meta = json.loads((data_dir / "meta.json").read_text())
    names = meta["sparse_features"]
    listed = values_file(data_dir)
    known = read_values(listed, names) if listed else {}
    feats = [FeatureSpec(f, len(known[f]) + 1, listed=True) if f in known else
             FeatureSpec(f, meta["cardinality"][f], listed=False) for f in names]
    part = sorted((data_dir / "train").glob("*.parquet"))[0]
    t = pq.read_table(part, columns=names)
    ids = np.stack([t.column(i).to_numpy()[:n * batch_size] for i in range(len(names))]).astype(np.int64)
    return feats, known, [KeyedJaggedTensor(keys=names, values=torch.from_numpy(np.ascontiguousarray(
        ids[:, i * batch_size:(i + 1) * batch_size]).reshape(-1)),
        lengths=torch.ones(batch_size * len(names), dtype=torch.int32), stride=batch_size) for i in range(n)]


def build(method: str, feats, known: dict, ratio: float, kjts: list[KeyedJaggedTensor]):
    """(DMP-wrapped module, its embedding) with CAFE's hot set filled as a warmed-up run holds it."""
    from dmp_helpers import shard

    from cafe_dist.embeddings.cafe.hotmap import HotMapUpdate
    from cafe_dist.embeddings.registry import build_embedding

    emb = build_embedding(method, feats, 16, ratio)
    emb.set_known_values(known)
    dmp = shard(emb, 1)[0]
    if method in ("cafe", "cafe_ml") and emb.compressed:
        keys = []
        for kjt in kjts:
            v = emb.values_of(kjt)
            keys.append(emb.keys_of(v)[~emb.is_full[v.feature]])
        uniq, counts = torch.cat(keys).unique(return_counts=True)
        top = uniq[counts.argsort(descending=True)[:emb.hot_rows]]
        emb.apply_update(HotMapUpdate(1, top, torch.arange(top.numel())), None)
    return dmp, emb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="hash,robe,cafe")
    ap.add_argument("--ratio", type=float, default=100.0)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=15, help="steps per round")
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    for name in ("torchrec", "torch.distributed", "fbgemm_gpu"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(1)

    from dmp_helpers import free_port, init

    from cafe_dist.bench.throughput import ThroughputSpec, synthetic_dataset

    init(0, 1, free_port())
    feats, known, kjts = batches(Path(synthetic_dataset(ThroughputSpec())), args.batch_size, args.steps + 5)
    methods = args.methods.split(",")
    models = {m: build(m, feats, known, args.ratio, kjts) for m in methods}
    weight = torch.randn(args.batch_size, len(feats), 16, generator=torch.Generator().manual_seed(0))

    def step(m: str, kjt: KeyedJaggedTensor) -> None:
        dmp, emb = models[m]
        dmp(kjt).mul(weight).sum().backward()  # a dense gradient, as the interaction layer gives
        if hasattr(emb, "scorer"):
            emb.scorer.flush(1)  # CAFE: this step's scores into the sketch (after_step's first part)

    for m in methods:  # warm-up: caches, the first-call paths
        for kjt in kjts[:5]:
            step(m, kjt)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.rounds):
        for m in methods:
            t0 = time.perf_counter()
            for kjt in kjts[5:]:
                step(m, kjt)
            times[m].append((time.perf_counter() - t0) / args.steps * 1e3)
    base = min(times.get("hash", times[methods[0]]))
    for m in methods:
        best = min(times[m])
        log.info("%-8s best %6.2f ms/step  median %6.2f  x hash (best) %.2f", m, best, statistics.median(times[m]),
                 best / base)


if __name__ == "__main__":
    main()
