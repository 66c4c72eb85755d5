"""``cafe-dist data criteo --address``: the Ray Data conversion writes the same dataset as the
single-machine converter (real Criteo rows split into three 'day' files, one with a bad line)."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cafe_dist.cli import main
from cafe_dist.data.formats.criteo import convert_criteo
from cafe_dist.data.schema import VALUES_FILE, DatasetMeta


def _days(tmp: Path) -> list[str]:
    from conftest import CRITEO_SAMPLE, need

    lines = need(CRITEO_SAMPLE).read_text().splitlines(keepends=True)
    parts = [lines[:4000], lines[4000:7000] + ["not\ta criteo line\n"], lines[7000:]]
    files = []
    for i, part in enumerate(parts):
        f = tmp / f"day_{i}.tsv"
        f.write_text("".join(part))
        files.append(str(f))
    return files


def _table(d: Path, split: str):
    return pq.read_table(sorted((d / split).glob("part-*.parquet")))


def test_ray_data_conversion_equals_the_single_machine_one(ray_cluster, tmp_path):
    days = _days(tmp_path)
    rc = main(["data", "criteo", "--input", *days, "--out", str(tmp_path / "dist"), "--test-fraction", "0.3",
               "--address", "local"])
    assert rc == 0
    single = convert_criteo(days, tmp_path / "single", test_fraction=0.3, progress=False)
    dist = DatasetMeta.load(tmp_path / "dist")
    assert dist.rows == single.rows == {"train": 7000, "test": 3000}
    assert dist.cardinality == single.cardinality and dist.raw_distinct == single.raw_distinct
    assert dist.distinct_counted == single.distinct_counted
    assert dist.bad_rows == single.bad_rows == 1
    assert dist.extra["converted_by"] == "ray-data"
    # the split falls inside day_1 (rows 7,000 on are test): train has 2 parts, test the other 2
    assert len(list((tmp_path / "dist" / "train").glob("*.parquet"))) == 2
    for split in ("train", "test"):
        a, b = _table(tmp_path / "dist", split), _table(tmp_path / "single", split)
        assert a.equals(b.select(a.column_names)), split
    assert pq.read_table(tmp_path / "dist" / VALUES_FILE).equals(pq.read_table(tmp_path / "single" / VALUES_FILE))
    assert not (tmp_path / "dist" / "vocab.parquet").exists()  # no vocabulary: raw values only
    bad = (tmp_path / "dist" / "bad_rows.tsv").read_text().splitlines()
    assert bad[1].startswith(f"{days[1]}\t3001\texpected 40 fields, got 2")


@pytest.mark.slow  # the local sample is in the default run (test_lma); this is its Ray Data twin
def test_lma_sample_as_a_ray_data_job_is_the_local_sample(ray_cluster, tiny_synth):
    import numpy as np

    from cafe_dist.data.sample import sample_train_ids
    from cafe_dist.data.schema import DatasetMeta

    meta = DatasetMeta.load(tiny_synth)
    local = sample_train_ids(str(tiny_synth), meta, 4000, seed=5, progress=False)
    by_ray = sample_train_ids(str(tiny_synth), meta, 4000, seed=5, address="local")  # joins the session's cluster
    assert local.shape == (4000, len(meta.sparse_features)) and np.array_equal(local, by_ray)
    assert not np.array_equal(local, sample_train_ids(str(tiny_synth), meta, 4000, seed=6, progress=False))
