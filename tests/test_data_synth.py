import numpy as np
import pyarrow.parquet as pq

from cafe_dist.data.synth import SynthGenerator, SynthSpec, generate_synthetic


def test_deterministic_by_seed():
    a = SynthGenerator(SynthSpec(rows=5000, seed=7)).chunk(1000, 2000)
    b = SynthGenerator(SynthSpec(rows=5000, seed=7)).chunk(1000, 2000)
    c = SynthGenerator(SynthSpec(rows=5000, seed=8)).chunk(1000, 2000)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], c[2])


def test_written_dataset_is_deterministic_and_criteo_shaped(tmp_path):
    spec = SynthSpec(rows=20_000, seed=1, cardinality_scale=0.001)
    m1 = generate_synthetic(tmp_path / "a", spec, progress=False)
    generate_synthetic(tmp_path / "b", spec, progress=False)
    ta, tb = pq.read_table(tmp_path / "a" / "train"), pq.read_table(tmp_path / "b" / "train")
    assert ta.equals(tb)
    assert len(m1.dense_features) == 13 and len(m1.sparse_features) == 26
    assert m1.rows["train"] + m1.rows["test"] == 20_000
    ctr = np.asarray(ta.column("label")).mean()
    assert 0.1 < ctr < 0.45


def test_ids_are_zipf_skewed():
    spec = SynthSpec(rows=100_000, seed=0, cardinality_scale=0.1)
    _, _, sparse = SynthGenerator(spec).chunk(0, 100_000)
    ids = sparse[:, 2]  # a large feature (~1M ids)
    _, counts = np.unique(ids, return_counts=True)
    counts = np.sort(counts)[::-1]
    top = max(1, len(counts) // 100)
    assert counts[:top].sum() / counts.sum() > 0.3  # top 1% of seen ids take > 30% of traffic


def test_popular_ids_drift():
    spec = SynthSpec(rows=200_000, seed=0, cardinality_scale=0.01, drift_period=50_000)
    gen = SynthGenerator(spec)
    f = 2
    _, _, early = gen.chunk(0, 50_000)
    _, _, late = gen.chunk(50_000, 50_000)

    def top(sparse, k=50):
        vals, counts = np.unique(sparse[:, f], return_counts=True)
        return set(vals[np.argsort(-counts)[:k]])

    assert top(early) == set(gen.top_ids(f, 0, 50)) or len(top(early) & set(gen.top_ids(f, 0, 50))) > 40
    assert len(top(early) & top(late)) < 5  # after a rotation the popular ids are new ones
    assert len(top(late) & set(gen.top_ids(f, 50_000, 50))) > 40
