"""LMA: memory shared by co-occurrence. Signatures from a known sample, looked up by the real
TorchRec EBC on CPU; the data step on a real converted dataset."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torchrec import KeyedJaggedTensor

from cafe_dist.data.schema import DatasetMeta
from cafe_dist.data.synth import SynthSpec, generate_synthetic
from cafe_dist.embeddings import FeatureSpec, build_embedding
from cafe_dist.embeddings.hashing import hash_mod
from cafe_dist.embeddings.lma import (
    SIGNATURE_BYTES,
    LMAEmbedding,
    LMAOptions,
    minhash_signatures,
    signature_path,
    signature_table,
)
from cafe_dist.embeddings.routing import Values
from tests.values import ids_as_values

CPU = torch.device("cpu")
FEATS = [FeatureSpec("a", 5000), FeatureSpec("b", 5000), FeatureSpec("c", 5000)]


def _sample(rng: np.random.Generator, rows: int = 4000) -> np.ndarray:
    """Ids of ``rows`` sampled rows. First half: values 1..99 of a and b co-occur exactly (b = a);
    c takes a's value on half of those rows and a value 100..999 otherwise, so c's v has Jaccard 1/2
    with a's v. Second half: ids 1000+ of a and b, each in two rows of its own (disjoint sets)."""
    half = rows // 2
    a = rng.integers(1, 100, half)
    c = np.where(rng.random(half) < 0.5, a, rng.integers(100, 1000, half))
    solo = 1000 + np.arange(rows - half) // 2
    return np.concatenate([np.stack([a, a, c], axis=1), np.stack([solo, solo, np.zeros_like(solo)], axis=1)])


def _emb(tmp_path, ids, ratio=20.0, **opts) -> LMAEmbedding:
    path = tmp_path / "sig.parquet"
    pq.write_table(signature_table(minhash_signatures(ids, seed=0), [f.name for f in FEATS]), path)
    torch.manual_seed(0)
    return ids_as_values(build_embedding("lma", FEATS, 16, ratio, device=CPU, options={"signatures": str(path), **opts}))


def _values(emb, feature: int, ids) -> Values:
    ids = torch.as_tensor(ids, dtype=torch.int64)
    n = ids.numel()
    return Values(ids, torch.full((n,), feature), torch.arange(n), torch.ones(1, n, dtype=torch.int64), n)


def _blocks(emb, feature, ids) -> torch.Tensor:
    return torch.stack(emb.block_rows(_values(emb, feature, ids)), dim=1)  # (n, blocks)


def test_values_with_identical_row_sets_get_identical_embeddings(tmp_path):
    ids = _sample(np.random.default_rng(0))
    emb = _emb(tmp_path, ids)
    v = torch.arange(1, 100)
    assert torch.equal(_blocks(emb, 0, v), _blocks(emb, 1, v))  # a=v and b=v: the same rows
    kjt = KeyedJaggedTensor(keys=["a", "b", "c"], values=torch.cat([v, v, v]),
                            lengths=torch.ones(3 * 99, dtype=torch.int32), stride=99)
    out = emb(kjt)  # (B, F, D) through the real EBC
    assert torch.equal(out[:, 0], out[:, 1]) and not torch.equal(out[:, 0], out[:, 2])


def test_sharing_follows_jaccard_and_disjoint_sets_collide_at_the_random_rate(tmp_path):
    ids = _sample(np.random.default_rng(1), rows=20_000)
    emb = _emb(tmp_path, ids, ratio=5.0)
    v = torch.arange(1, 100)
    shared = (_blocks(emb, 0, v) == _blocks(emb, 2, v)).float().mean().item()
    # Jaccard of a's v and c's v: c's v is in half of v's rows and nowhere else, so J = 1/2;
    # a block combines k=2 min-hashes: shared with probability J^2 = 0.25 (396 blocks: sd 0.022)
    assert shared == pytest.approx(0.25, abs=0.08)
    solo = torch.arange(1000, 6_000)  # 5,000 values, each in two rows of its own
    b = _blocks(emb, 0, solo)
    pairs = (b[:-1] == b[1:]).float().mean().item()  # neighbours: disjoint row sets
    assert pairs < 5.0 / emb.array_rows, (pairs, emb.array_rows)


def test_values_without_a_signature_read_random_blocks_like_robe(tmp_path):
    ids = _sample(np.random.default_rng(2))
    emb = _emb(tmp_path, ids)
    unseen = torch.arange(3000, 3100)  # never sampled
    key = unseen * len(FEATS) + 1
    expected = torch.stack([hash_mod(key, emb.array_rows, seed=j) for j in range(emb.nblocks)], dim=1)
    assert torch.equal(_blocks(emb, 1, unseen), expected)
    plain = build_embedding("lma", FEATS, 16, 20.0, device=CPU)  # no signatures at all: robe's lookup
    assert plain.n_signed == 0 and plain.array_rows == build_embedding("robe", FEATS, 16, 20.0, device=CPU).array_rows


@pytest.mark.parametrize("ratio", [5.0, 20.0, 200.0])
def test_signatures_are_counted_in_the_bytes_and_capped_by_their_share(tmp_path, ratio):
    ids = _sample(np.random.default_rng(3))
    emb = _emb(tmp_path, ids, ratio=ratio, signature_share=0.3)
    per_sig = 4 + SIGNATURE_BYTES
    assert emb.aux_bytes() == emb.n_signed * per_sig > 0
    assert emb.embedding_bytes() == emb.table_bytes() + emb.n_signed * per_sig
    assert emb.n_signed * per_sig <= 0.3 * emb.budget.compressed_bytes
    assert emb.full_embedding_bytes() / emb.embedding_bytes() == pytest.approx(ratio, rel=0.02)
    counts = minhash_signatures(ids, seed=0)["count"]
    eligible = int((counts >= 2).sum())
    assert emb.n_signed == min(eligible, int(0.3 * emb.budget.compressed_bytes // per_sig))


def test_min_count_leaves_once_seen_values_to_hashing(tmp_path):
    ids = _sample(np.random.default_rng(4))
    counts = minhash_signatures(ids, seed=0)["count"]
    for m in (1, 2, 50):
        emb = _emb(tmp_path, ids, ratio=2.0, min_count=m, signature_share=0.9)
        assert emb.n_signed == int((counts >= m).sum())


def test_data_step_samples_a_converted_dataset_and_a_run_finds_the_file(tmp_path):
    meta = generate_synthetic(tmp_path / "d", SynthSpec(rows=6000, seed=0), test_fraction=1 / 7)
    opts = LMAEmbedding.prepare_data(str(tmp_path / "d"), meta, LMAOptions(sample_rows=3000))
    path = signature_path(str(tmp_path / "d"), 3000, 0, 2)
    assert opts.signatures == path and (tmp_path / "d" / "lma").is_dir()
    t = pq.read_table(path)
    assert t.num_rows > 0 and min(t.column("count").to_pylist()) >= 2
    assert set(t.column("feature").to_pylist()) <= set(meta.sparse_features)
    mtime = (tmp_path / "d" / "lma" / "signatures_raw_r3000_s0_c2.parquet").stat().st_mtime_ns
    again = LMAEmbedding.prepare_data(str(tmp_path / "d"), DatasetMeta.load(tmp_path / "d"), LMAOptions(sample_rows=3000))
    assert again.signatures == path  # reused, not recomputed
    assert (tmp_path / "d" / "lma" / "signatures_raw_r3000_s0_c2.parquet").stat().st_mtime_ns == mtime
    feats = [FeatureSpec(f, meta.cardinality[f]) for f in meta.sparse_features]
    emb = build_embedding("lma", feats, 16, 100, device=CPU, options=opts)
    assert emb.n_signed > 0
