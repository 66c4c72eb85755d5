"""Every method sharded by real DMP across two gloo processes (no Ray: seconds, not minutes):
it trains (its tables change, the loss is finite) and stateful methods stay identical on both ranks.
The inputs are raw 32-bit values, as a dataset holds them: compressed features hash them, the
feature the budget keeps uncompressed maps them through its list of values."""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dmp_helpers import free_port, init, shard

from cafe_dist.embeddings import REGISTRY
from cafe_dist.embeddings.lma import minhash_signatures, signature_table

CAFE = {"threshold": 4.0, "ml_threshold": 1.5, "sync_interval": 2, "sync_lag": 1}
OPTIONS = {"cafe": CAFE, "cafe_ml": {**CAFE, "admission": "threshold"}, "mch": {"eviction_interval": 2}}
CARDS = [5, 3000, 9000, 20000]


def raw(ranks, feature: int):
    """The raw 32-bit value of each popularity rank of a feature (a fixed scramble)."""
    return ((ranks + 1) * 2654435761 % 4294967291 ^ (feature * 0x5BD1E995)) & 0xFFFFFFFF


def _worker(rank: int, world: int, port: int, out_dir: str, sharding: str) -> None:
    init(rank, world, port)
    from torchrec import KeyedJaggedTensor

    from cafe_dist.embeddings import FeatureSpec, build_embedding

    feats = [FeatureSpec("a", 5), FeatureSpec("b", 3000), FeatureSpec("c", 9000), FeatureSpec("d", 20000)]
    options = {**OPTIONS, "lma": {"signatures": os.path.join(out_dir, "lma.parquet")}}
    results = {}
    for method in REGISTRY:
        torch.manual_seed(0)
        emb = build_embedding(method, feats, 16, 50, options=options.get(method))
        emb.set_known_values({f.name: np.sort(raw(np.arange(f.cardinality - 1), j)) for j, f in enumerate(feats)})
        dmp, rows, _, dense = shard(emb, world, sharding)
        model = dmp.module
        before = {t.name: rows.read([(t.name, torch.arange(t.num_embeddings))])[0] for t in model.emb.tables}
        g = torch.Generator().manual_seed(rank)
        target = torch.randn(8, 4, 16, generator=torch.Generator().manual_seed(1))
        losses, stats = [], {}
        for _ in range(6):
            zipf = (torch.rand(4, 8, generator=g) ** 3 * torch.tensor([[c] for c in CARDS])).long()
            values = torch.stack([raw(zipf[j], j) for j in range(4)])
            assert int(values.max()) >= 2**31  # raw values: far past any table's rows
            kjt = KeyedJaggedTensor(keys=["a", "b", "c", "d"], values=values.reshape(-1),
                                    lengths=torch.ones(32, dtype=torch.int32), stride=8)
            loss = (dmp(kjt) - target).pow(2).mean()
            if dense is not None:
                dense.zero_grad()
            loss.backward()
            if dense is not None:
                dense.step()
            losses.append(float(loss))
            for k, v in model.emb.after_step(rows).items():
                stats[k] = stats.get(k, 0.0) + v
        after = {t.name: rows.read([(t.name, torch.arange(t.num_embeddings))])[0] for t in model.emb.tables}
        results[method] = {
            "losses": losses, "stats": stats, "checksum": model.emb.state_checksum(),
            "changed": {n: bool((after[n] != before[n]).any()) for n in before},
            "ratio": model.emb.full_embedding_bytes() / model.emb.embedding_bytes(),
            "summary": model.emb.sync_summary(0.0),
        }
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module", params=["table_wise", "column_wise", "data_parallel"])
def dmp_results(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    ranks = (np.random.default_rng(0).random((2000, 4)) ** 3 * CARDS).astype(np.int64)
    sample = np.stack([raw(ranks[:, j], j) for j in range(4)], axis=1)
    pq.write_table(signature_table(minhash_signatures(sample, seed=0), list("abcd")), out / "lma.parquet")
    mp.spawn(_worker, args=(2, free_port(), str(out), request.param), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in (0, 1)]


@pytest.mark.parametrize("method", list(REGISTRY))
def test_method_trains_under_dmp_on_two_ranks(dmp_results, method):
    r0, r1 = dmp_results[0][method], dmp_results[1][method]
    assert all(torch.isfinite(torch.tensor(r0["losses"])))
    untouched = [n for n, changed in r0["changed"].items() if not changed]
    # every table is updated by its optimizer; CAFE-ML's second hash tables only for features with
    # medium ids in these few steps
    if method == "cafe_ml":
        assert any(n.startswith("hash2_") for n in r0["changed"] if n not in untouched)
        untouched = [n for n in untouched if not n.startswith("hash2_")]
    assert untouched == [], f"{method}: tables never updated: {untouched}"
    # full stores its vocabulary beside its tables (8 B a value against 64 B a row): 64 / 72 of the reference
    assert r0["ratio"] == pytest.approx(64 / 72 if method == "full" else 50, rel=0.02)
    assert r0["checksum"] == r1["checksum"]  # hot sets / id maps identical on both ranks
    if method.startswith("cafe"):
        assert r0["stats"]["promoted"] > 0 and r0["changed"].get("cafe", False)
    if method == "mch":
        assert r0["stats"]["evicted"] >= 0
    if method == "lma":  # signatures loaded on both ranks, inside the budget (ratio above)
        assert r0["summary"]["lma_signed"] > 0 and r0["summary"] == r1["summary"]
