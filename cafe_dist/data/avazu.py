"""Avazu CSV → Parquet: 21 categorical fields hashed to 32-bit ids, plus hour-of-day and weekday."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cafe_dist.data.parsing import hash_strings32
from cafe_dist.data.schema import DatasetMeta
from cafe_dist.data.target import staged_dataset
from cafe_dist.data.textsource import bad_row_text, first_line, parse_into
from cafe_dist.data.writer import DatasetWriter
from cafe_dist.errors import BadInputError

AVAZU_FIELDS = [
    "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]  # fmt: skip
AVAZU_SPARSE = AVAZU_FIELDS + ["hour_of_day", "weekday"]
TRAIN_HEADER = ["id", "click", "hour"] + AVAZU_FIELDS
TEST_HEADER = ["id", "hour"] + AVAZU_FIELDS


def _header(path: str) -> list[str]:
    header = first_line(path).split(",")
    if header == TRAIN_HEADER or header == TEST_HEADER:
        return header
    missing = sorted(set(TEST_HEADER) - set(header))
    raise BadInputError(
        f"{path}: the header does not match Avazu's ({len(header)} columns"
        + (f"; missing {', '.join(missing)}" if missing else "; unexpected order or extra columns")
        + f"). Expected: {','.join(TRAIN_HEADER)} (test files have no 'click')."
    )


def convert_avazu(
    inputs: list[str],
    out_dir: str | Path,
    *,
    test_fraction: float = 1 / 7,
    min_count: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> DatasetMeta:
    """Convert into ``out_dir`` as :func:`cafe_dist.data.criteo.convert_criteo` does (staged, swapped in)."""
    if not inputs:
        raise BadInputError("no input files given")
    headers = {p: _header(p) for p in inputs}
    labeled = {tuple(h) == tuple(TRAIN_HEADER) for h in headers.values()}
    if len(labeled) > 1:
        raise BadInputError("mixing labeled (with 'click') and unlabeled Avazu files")
    labeled_flag = labeled.pop()
    with staged_dataset(out_dir, overwrite) as stage:
        writer = DatasetWriter(
            stage, "avazu", [], AVAZU_SPARSE, test_fraction=test_fraction, labeled=labeled_flag,
            min_count=min_count, sources=[str(p) for p in inputs], extra_columns={"hour": pa.int64()},
            progress=progress,
        )
        for path in inputs:
            names = headers[path]
            parse_into(path, names, ",", writer,
                       lambda tb, names=names, path=path: _convert_block(tb, names, labeled_flag, writer, str(path)),
                       progress, skip_header=True)
        return writer.finalize()


def _convert_block(tb, names: list[str], labeled: bool, writer: DatasetWriter, source: str) -> None:
    t = tb.table
    n = t.num_rows
    reasons_ok: list[tuple[str, str, np.ndarray]] = []
    if labeled:
        click = t.column("click")
        ok = pc.is_in(click, pa.array(["0", "1"])).to_numpy(zero_copy_only=False)
        reasons_ok.append(("click", "click must be 0 or 1", ok))
        label = np.where(ok, pc.cast(pc.if_else(pa.array(ok), click, "0"), pa.int8()).to_numpy(), 0)
    else:
        label = np.full(n, -1, np.int8)
    hour_s = t.column("hour")
    ts = pc.strptime(hour_s, format="%y%m%d%H", unit="s", error_is_null=True)
    hour_ok = (pc.match_substring_regex(hour_s, r"^[0-9]{8}$").to_numpy(zero_copy_only=False)
               & pc.is_valid(ts).to_numpy(zero_copy_only=False))
    reasons_ok.append(("hour", "hour must be YYMMDDHH", hour_ok))
    ts = pc.fill_null(ts, pa.scalar(0, pa.timestamp("s")))
    hour_of_day = pc.hour(ts).to_numpy(zero_copy_only=False).astype(np.int64)
    weekday = pc.day_of_week(ts).to_numpy(zero_copy_only=False).astype(np.int64)
    hour_num = pc.cast(pc.if_else(pa.array(hour_ok), hour_s, "0"), pa.int64()).to_numpy()
    sparse = np.zeros((n, len(AVAZU_SPARSE)), np.int64)
    for j, name in enumerate(AVAZU_FIELDS):
        sparse[:, j] = hash_strings32(t.column(name))
    sparse[:, -2] = hour_of_day
    sparse[:, -1] = weekday
    ok_mat = np.stack([ok for _, _, ok in reasons_ok], axis=1)
    good = ok_mat.all(axis=1)
    if not good.all():
        bad = np.flatnonzero(~good)
        first_bad = np.argmax(~ok_mat[bad], axis=1)
        raws = bad_row_text(t, bad, ",")
        reasons = []
        for row, k in zip(bad, first_bad):
            col, why, _ = reasons_ok[k]
            reasons.append(f"{why}: {t.column(col)[int(row)].as_py()!r}")
        writer.add_bad(source, tb.lines[bad].tolist(), reasons, raws)
    writer.add_rows(label[good], np.zeros((int(good.sum()), 0), np.float32), sparse[good],
                    extra={"hour": hour_num[good]})
