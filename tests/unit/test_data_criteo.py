import gzip
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import CRITEO_SAMPLE, need

from cafe_dist.cli import main
from cafe_dist.data.formats.criteo import convert_criteo
from cafe_dist.data.schema import MISSING_ID, VALUES_FILE, DatasetMeta
from cafe_dist.data.vocabulary import read_values
from cafe_dist.errors import BadInputError


def _line(rng, label=None, ints=None, cats=None):
    label = rng.integers(0, 2) if label is None else label
    ints = ints if ints is not None else [str(v) for v in rng.integers(0, 50, 13)]
    cats = cats if cats is not None else [f"{v:08x}" for v in rng.integers(0, 40, 26) * 7919 + 1]
    return "\t".join([str(label), *ints, *cats])


def _read(out, split):
    return pq.read_table(out / split).to_pydict()


def test_good_missing_and_malformed_lines(tmp_path):
    rng = np.random.default_rng(0)
    lines = [_line(rng) for _ in range(60)]
    ints = ["", "-3", "0", "7"] + ["1"] * 9
    cats = [""] + ["0000abcd"] * 25
    lines[5] = _line(rng, label=1, ints=ints, cats=cats)  # missing and negative values: a good line
    bad = {
        10: ("1\t2\t3", "expected 40 fields, got 3"),
        20: (_line(rng, ints=["x1"] + ["1"] * 12), "bad integer in I1: 'x1'"),
        30: (_line(rng, cats=["zzzzzzzz"] + ["00000001"] * 25), "bad hex value in C1: 'zzzzzzzz'"),
        40: (_line(rng, label=2), "label must be 0 or 1: '2'"),
        50: ("", "empty line"),
    }
    for i, (text, _) in bad.items():
        lines[i] = text
    src = tmp_path / "day.tsv"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    meta = convert_criteo([str(src)], out, test_fraction=0.25, progress=False)

    assert meta.bad_rows == len(bad)
    assert meta.rows["train"] + meta.rows["test"] + meta.bad_rows == len(lines)
    assert meta.rows["test"] == round((len(lines) - len(bad)) * 0.25)
    records = (out / "bad_rows.tsv").read_text().splitlines()[1:]
    assert len(records) == len(bad)
    for rec in records:
        _, line_no, reason, _ = rec.split("\t", 3)
        assert reason.startswith(bad[int(line_no) - 1][1]), rec

    train = _read(out, "train")
    row = 5  # line 6, before any bad line, so it is train row 5
    assert train["C1"][row] == MISSING_ID and train["C2"][row] == 0xABCD
    assert train["I1"][row] == 0.0 and train["I2"][row] == 0.0  # missing and negative → 0
    assert train["I4"][row] == pytest.approx(math.log1p(7))
    assert DatasetMeta.load(out).bad_rows == len(bad)


def test_sequential_split_values_and_gzip(tmp_path):
    rng = np.random.default_rng(1)
    lines = [_line(rng) for _ in range(70)]
    unseen = "ffffffff"
    lines[-1] = _line(rng, cats=[unseen] * 26)  # only in the test split: not a train value
    src = tmp_path / "day.tsv.gz"
    with gzip.open(src, "wt") as f:
        f.write("\n".join(lines) + "\n")
    out = tmp_path / "out"
    meta = convert_criteo([str(src)], out, test_fraction=1 / 7, progress=False)
    assert meta.rows == {"train": 60, "test": 10}
    test = _read(out, "test")
    expected_last = [int(line.split("\t")[14], 16) for line in lines[-10:]]
    assert test["C1"] == expected_last  # the test split is the last rows, in order
    assert not any(c.endswith("_idx") for c in test)  # raw values only: no vocabulary ids
    train = _read(out, "train")
    listed = read_values(str(out / VALUES_FILE), meta.sparse_features)
    for f in ("C1", "C26"):  # the train values, exactly; the test-only value is not among them
        assert listed[f].tolist() == sorted(set(train[f])) and int(unseen, 16) not in listed[f]
        assert meta.cardinality[f] == len(set(train[f])) + 1 and meta.distinct_counted[f] == "exact"


def test_entirely_malformed_file_is_a_clear_error(tmp_path):
    src = tmp_path / "junk.tsv"
    src.write_text("\n".join("\t".join(["x"] * 40) for _ in range(5)) + "\n")
    with pytest.raises(BadInputError, match="all 5 lines were malformed"):
        convert_criteo([str(src)], tmp_path / "out", progress=False)
    other = tmp_path / "other.csv"
    other.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(BadInputError, match="Is this a Criteo TSV file"):
        convert_criteo([str(other)], tmp_path / "out2", progress=False)


def test_cli_reports_missing_input(tmp_path, capsys):
    rc = main(["data", "criteo", "--input", str(tmp_path / "absent.tsv"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "input file not found" in capsys.readouterr().err


def test_real_criteo_sample_with_broken_lines(tmp_path):
    lines = need(CRITEO_SAMPLE).read_text().splitlines()
    broken = lines[:500] + ["garbage", lines[500].replace("\t", "\tq", 1)] + lines[501:]
    src = tmp_path / "criteo.tsv"
    src.write_text("\n".join(broken) + "\n")
    meta = convert_criteo([str(src)], tmp_path / "out", progress=False)
    assert meta.bad_rows == 2
    assert meta.rows["train"] + meta.rows["test"] == len(lines) - 1 + 0  # line 501 was broken
    assert meta.rows["train"] + meta.rows["test"] + meta.bad_rows == len(broken)
    assert 3 <= min(meta.cardinality.values()) and max(meta.cardinality.values()) < 10_000
    labels = np.asarray(pq.read_table(tmp_path / "out" / "train", columns=["label"]).column(0))
    assert 0.15 < labels.mean() < 0.3  # 21.8 % positives in this sample
