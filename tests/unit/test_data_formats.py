"""Click logs other than Criteo's: a CSV with a header (TalkingData's layout) described by a spec,
and libfm / libffm lines (Frappe's layout); their bad rows, the spec's errors, and a served request
parsed by the same code as conversion. Small files written here; real ones are kept aside."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from clicklogs import SPEC, frappe, talkingdata

from cafe_dist.cli import main
from cafe_dist.data.formats import CsvSpec, format_of
from cafe_dist.data.schema import MISSING_ID, DatasetMeta
from cafe_dist.errors import BadInputError


def _bad_rows(out) -> list[list[str]]:
    return [line.split("\t") for line in (out / "bad_rows.tsv").read_text().splitlines()[1:]]


def test_a_talkingdata_csv_converts_with_its_header_names_and_time_features(tmp_path):
    talkingdata(tmp_path / "train.csv", bad=True)
    (tmp_path / "spec.yaml").write_text(SPEC)
    assert main(["data", "csv", "--input", str(tmp_path / "train.csv"), "--spec", str(tmp_path / "spec.yaml"),
                 "--out", str(tmp_path / "ds")]) == 0
    meta = DatasetMeta.load(tmp_path / "ds")
    assert meta.format == "csv" and meta.dense_features == [] and meta.labeled
    assert meta.sparse_features == ["ip", "app", "device", "os", "channel", "click_time_hour", "click_time_weekday"]
    assert meta.rows["train"] + meta.rows["test"] == 4000 and meta.bad_rows == 3
    bad = _bad_rows(tmp_path / "ds")
    assert sorted((b[1], b[2]) for b in bad) == [
        ("10", "label must be 0 or 1 (or set label.positive in the spec): 'maybe'"),
        ("13", "expected 8 fields, got 3"),
        ("6", "time not in the format %Y-%m-%d %H:%M:%S: 'yesterday'")]
    t = pq.read_table(sorted((tmp_path / "ds" / "train").glob("*.parquet"))[0])
    assert set(np.unique(t.column("click_time_hour").to_numpy())) <= set(range(24))
    assert format_of(meta).spec == CsvSpec.load(tmp_path / "spec.yaml")  # recorded: raw rows parse the same later


def test_csv_spec_errors_name_the_key_and_missing_columns_the_file(tmp_path, capsys):
    talkingdata(tmp_path / "train.csv", rows=20)
    for text, said in (("categorical: []\n", "categorical: List should have at least 1 item"),
                       ("categorical: [app]\nlabel: app\n", "the label column 'app' is also a feature"),
                       ("categorical: [app]\nheader: false\n", "header: false needs columns"),
                       ("categorical: [app, nope]\n", "no column(s) 'nope' in its header")):
        (tmp_path / "spec.yaml").write_text(text)
        capsys.readouterr()
        assert main(["data", "csv", "--input", str(tmp_path / "train.csv"), "--spec", str(tmp_path / "spec.yaml"),
                     "--out", str(tmp_path / "ds")]) == 2
        assert said in capsys.readouterr().err


def test_a_label_named_by_its_positive_value_and_quoted_fields(tmp_path):
    (tmp_path / "log.csv").write_text('user;"item;with;semicolons";outcome\n' + "\n".join(
        f'u{i % 7};"i{i % 5};x";{"click" if i % 3 == 0 else "view"}' for i in range(70)) + "\n")
    (tmp_path / "spec.yaml").write_text("delimiter: ';'\nlabel: {column: outcome, positive: click}\n"
                                        "categorical: [user, 'item;with;semicolons']\n")
    assert main(["data", "csv", "--input", str(tmp_path / "log.csv"), "--spec", str(tmp_path / "spec.yaml"),
                 "--out", str(tmp_path / "ds"), "--test-fraction", "0.1"]) == 0
    meta = DatasetMeta.load(tmp_path / "ds")
    assert meta.sparse_features == ["user", "item;with;semicolons"] and meta.bad_rows == 0
    assert meta.raw_distinct == {"user": 7, "item;with;semicolons": 5}  # the quotes kept the ; inside one field
    labels = pq.read_table(sorted((tmp_path / "ds" / "train").glob("*.parquet"))[0]).column("label").to_numpy()
    assert labels[:6].tolist() == [1, 0, 0, 1, 0, 0]


@pytest.mark.parametrize("ffm", [False, True])
def test_libfm_and_libffm_lines_convert_with_their_bad_rows(tmp_path, ffm):
    lines = frappe(tmp_path / "frappe.libfm", ffm=ffm, bad=True)
    assert main(["data", "libsvm", "--input", str(tmp_path / "frappe.libfm"), "--out", str(tmp_path / "ds")]) == 0
    meta = DatasetMeta.load(tmp_path / "ds")
    assert meta.format == "libsvm" and meta.sparse_features == [f"F{k}" for k in range(1, 11)]
    assert meta.rows["train"] + meta.rows["test"] == 3000 and meta.bad_rows == 3
    reasons = sorted((b[1], b[2].split(":")[0]) for b in _bad_rows(tmp_path / "ds"))
    assert reasons == [("12", "not field 1" if ffm else "not idx"), ("5", "expected 11 fields, got 10"),
                       ("8", "label must be -1, 0, +1 or 1")]
    t = pq.read_table(sorted((tmp_path / "ds" / "train").glob("*.parquet"))[0])
    first = lines[0].split(" ")
    assert t.column("label")[0].as_py() == (first[0] == "1")
    assert t.column("F1")[0].as_py() == int(first[1].split(":")[-2])  # the raw value is the index


def test_a_served_request_is_parsed_by_the_conversion_code_and_refused_with_column_and_row(tmp_path):
    talkingdata(tmp_path / "train.csv", rows=200)
    (tmp_path / "spec.yaml").write_text(SPEC)
    assert main(["data", "csv", "--input", str(tmp_path / "train.csv"), "--spec", str(tmp_path / "spec.yaml"),
                 "--out", str(tmp_path / "ds")]) == 0
    fmt = format_of(DatasetMeta.load(tmp_path / "ds"))
    frame = pd.DataFrame({"ip": ["5", "6"], "app": [3, 4], "device": ["1", None], "os": ["2", "3"],
                          "channel": ["9", "10"], "click_time": ["2017-11-07 09:10:11", "2017-11-08 23:00:00"]})
    dense, raw = fmt.request_arrays(frame)
    assert dense.shape == (2, 0) and raw.shape == (7, 2) and raw[2, 1] == MISSING_ID
    assert raw[5].tolist() == [9, 23] and raw[6].tolist() == [1, 2]  # hour, weekday (Tue, Wed)
    with pytest.raises(BadInputError, match=r"column click_time, row 1: time not in the format"):
        fmt.request_arrays(frame.assign(click_time=["2017-11-07 09:10:11", "soon"]))
    with pytest.raises(BadInputError, match=r"lacks column\(s\) os"):
        fmt.request_arrays(frame.drop(columns=["os"]))
