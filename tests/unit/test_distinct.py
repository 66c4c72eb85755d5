"""Conversion without a vocabulary: distinct counts in one pass (exact while small, HyperLogLog
after), mergeable across parts; each input read once; a values file for the small features only."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from cafe_dist.data import distinct
from cafe_dist.data.distinct import EXACT, SKETCH, DistinctCounter, hll_estimate, hll_registers
from cafe_dist.data.formats.criteo import convert_criteo
from cafe_dist.data.schema import VALUES_FILE
from cafe_dist.data.vocabulary import build_vocabulary, read_values


@pytest.mark.parametrize("n", [1, 100, 5_000, 60_000, 400_000, 3_000_000])
def test_hyperloglog_is_within_three_standard_errors_over_the_whole_range(n):
    values = np.random.default_rng(n).integers(0, 2**32, n)
    true = len(np.unique(values))
    assert abs(hll_estimate(hll_registers(values)) / true - 1) < 3 * 1.04 / np.sqrt(distinct.HLL_M)


def test_counters_merge_like_one_counter_over_all_values(monkeypatch):
    monkeypatch.setattr(distinct, "EXACT_LIMIT", 1000)
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 5000, 700) for _ in range(6)]
    one = DistinctCounter()
    for p in parts:
        one.add(p)
    merged = DistinctCounter()
    for p in parts:
        c = DistinctCounter()
        c.add(p)
        assert c.is_exact and c.count() == len(np.unique(p))  # 700 values: exact
        merged.merge(c)
    true = len(np.unique(np.concatenate(parts)))
    assert true > 1000 and not one.is_exact and not merged.is_exact  # past the limit: the sketch
    assert one.count() == merged.count() and abs(merged.count() / true - 1) < 0.03
    assert one.values() is None and one.how == SKETCH


def _tsv(path, rows: int, seed: int = 0) -> None:
    """Criteo lines: C1 with 40 values (small), C2 with a value per row (large), others constant."""
    rng = np.random.default_rng(seed)
    c1 = rng.integers(0, 40, rows)
    c2 = rng.permutation(rows) + 1_000_000
    with open(path, "w") as f:
        for i in range(rows):
            dense = "\t".join(str(rng.integers(0, 9)) for _ in range(13))
            cats = [format(c1[i] + 7, "08x"), format(c2[i], "08x")] + ["0000abcd"] * 24
            f.write(f"{int(rng.random() < 0.3)}\t{dense}\t" + "\t".join(cats) + "\n")


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_conversion_reads_its_input_once_and_lists_only_small_features(tmp_path, monkeypatch):
    monkeypatch.setattr(distinct, "EXACT_LIMIT", 1000)  # C2 (a value per row) is counted by the sketch
    monkeypatch.setattr("cafe_dist.data.writer.ROWS_PER_PART", 4000)  # several parts, one cut at the split
    src = tmp_path / "day.tsv"
    _tsv(src, 21_000)
    convert_criteo([str(src)], tmp_path / "warm", progress=False)  # imports and caches: not this test's reads
    before = _bytes_read()
    meta = convert_criteo([str(src)], tmp_path / "out", progress=False)
    read = _bytes_read() - before
    part = max(p.stat().st_size for p in (tmp_path / "out").rglob("part-*.parquet"))
    # the text once, and back only the one part the split cuts (a second pass would be 2x the text)
    assert read < src.stat().st_size * 1.1 + part, (read, src.stat().st_size, part)
    assert meta.rows == {"train": 18_000, "test": 3_000}
    assert len(list((tmp_path / "out" / "train").glob("*.parquet"))) == 5  # 4000 x 4 + the cut part's 2000
    train = pq.read_table(tmp_path / "out" / "train", columns=["C1", "C2"])
    assert meta.distinct_counted["C1"] == EXACT and meta.cardinality["C1"] == len(set(train["C1"].to_pylist())) + 1
    assert meta.distinct_counted["C2"] == SKETCH and abs(meta.raw_distinct["C2"] / 18_000 - 1) < 0.03
    listed = read_values(str(tmp_path / "out" / VALUES_FILE), meta.sparse_features)
    assert "C2" not in listed and sorted(listed["C1"].tolist()) == sorted(set(train["C1"].to_pylist()))


def test_full_vocabulary_keeps_the_most_frequent_values_seen_often_enough(tmp_path):
    src = tmp_path / "day.tsv"
    _tsv(src, 7_000)
    meta = convert_criteo([str(src)], tmp_path / "d", progress=False)
    path = build_vocabulary(str(tmp_path / "d"), meta, max_ids_per_feature=10, min_count=2, progress=False)
    got = pq.read_table(path).to_pydict()
    train = pq.read_table(tmp_path / "d" / "train", columns=["C1", "C2"]).to_pydict()
    values, counts = np.unique(train["C1"], return_counts=True)
    top = set(values[np.argsort(-counts, kind="stable")[:10]].tolist())
    c1 = [v for f, v in zip(got["feature"], got["value"]) if f == 0]
    assert set(c1) == top and c1 == sorted(c1)  # the 10 most frequent, sorted by value
    assert not any(f == 1 for f in got["feature"])  # C2: every value once, none seen twice
    assert build_vocabulary(str(tmp_path / "d"), meta, 10, 2, progress=False) == path  # kept for the next run
