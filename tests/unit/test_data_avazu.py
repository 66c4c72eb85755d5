import pyarrow.parquet as pq
import pytest
from conftest import AVAZU_SAMPLE, need

from cafe_dist.data.formats.avazu import AVAZU_SPARSE, TRAIN_HEADER, convert_avazu
from cafe_dist.errors import BadInputError


def test_real_avazu_sample_with_broken_lines(tmp_path):
    lines = need(AVAZU_SAMPLE).read_text().splitlines()
    assert lines[0].split(",") == TRAIN_HEADER
    bad_click = lines[3].split(",")
    bad_click[1] = "7"
    bad_hour = lines[4].split(",")
    bad_hour[2] = "14x02100"
    broken = lines[:3] + [",".join(bad_click), ",".join(bad_hour), "1,2,3"] + lines[5:]
    src = tmp_path / "avazu.csv"
    src.write_text("\n".join(broken) + "\n")
    out = tmp_path / "out"
    meta = convert_avazu([str(src)], out, progress=False)
    assert meta.bad_rows == 3
    assert meta.rows["train"] + meta.rows["test"] + meta.bad_rows == len(broken) - 1  # minus header
    records = (out / "bad_rows.tsv").read_text().splitlines()[1:]
    reasons = {int(r.split("\t")[1]): r.split("\t")[2] for r in records}
    assert reasons[4].startswith("click must be 0 or 1")
    assert reasons[5].startswith("hour must be YYMMDDHH")
    assert reasons[6].startswith("expected 24 fields")
    assert meta.sparse_features == AVAZU_SPARSE and meta.dense_features == []
    t = pq.read_table(out / "train").to_pydict()
    assert set(t["hour_of_day"]) <= set(range(24)) and set(t["weekday"]) <= set(range(7))
    assert t["hour"][0] == 14102100
    assert 0.1 < sum(t["label"]) / len(t["label"]) < 0.25  # 17 % positives


def test_wrong_header_is_a_clear_error(tmp_path):
    src = tmp_path / "x.csv"
    src.write_text("id,click,hour,foo\n1,0,14102100,a\n")
    with pytest.raises(BadInputError, match="missing .*site_id"):
        convert_avazu([str(src)], tmp_path / "out", progress=False)
