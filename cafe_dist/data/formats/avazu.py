"""Avazu CSV: 21 categorical fields hashed to 32-bit ids, plus hour-of-day and weekday derived from
``hour`` (YYMMDDHH); the ``hour`` value itself is kept as an extra Parquet column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cafe_dist.data.formats.base import Block, ClickLogFormat, Layout
from cafe_dist.data.parsing import hash_strings32
from cafe_dist.data.schema import MISSING_ID, DatasetMeta
from cafe_dist.data.textsource import first_line
from cafe_dist.errors import BadInputError

AVAZU_FIELDS = [
    "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]  # fmt: skip
AVAZU_SPARSE = AVAZU_FIELDS + ["hour_of_day", "weekday"]
TRAIN_HEADER = ["id", "click", "hour"] + AVAZU_FIELDS
TEST_HEADER = ["id", "hour"] + AVAZU_FIELDS


class Avazu(ClickLogFormat):
    name = "avazu"
    delimiter = ","
    extra_columns = {"hour": pa.int64()}

    @property
    def dense_features(self) -> list[str]:
        return []

    @property
    def sparse_features(self) -> list[str]:
        return list(AVAZU_SPARSE)

    def layout(self, path: str) -> Layout:
        header = first_line(path).split(",")
        if header in (TRAIN_HEADER, TEST_HEADER):
            return Layout(header, labeled=header == TRAIN_HEADER, header=True)
        missing = sorted(set(TEST_HEADER) - set(header))
        raise BadInputError(
            f"{path}: the header does not match Avazu's ({len(header)} columns"
            + (f"; missing {', '.join(missing)}" if missing else "; unexpected order or extra columns")
            + f"). Expected: {','.join(TRAIN_HEADER)} (test files have no 'click').")

    def parse_block(self, table: pa.Table, labeled: bool) -> Block:
        n = table.num_rows
        checks = []
        if labeled:
            click = table.column("click")
            ok = pc.is_in(click, pa.array(["0", "1"])).to_numpy(zero_copy_only=False)
            checks.append(("click", "click must be 0 or 1", ok))
            label = np.where(ok, pc.cast(pc.if_else(pa.array(ok), click, "0"), pa.int8()).to_numpy(), 0).astype(np.int8)
        else:
            label = np.full(n, -1, np.int8)
        hour = table.column("hour")
        ts = pc.strptime(hour, format="%y%m%d%H", unit="s", error_is_null=True)
        hour_ok = (pc.match_substring_regex(hour, r"^[0-9]{8}$").to_numpy(zero_copy_only=False)
                   & pc.is_valid(ts).to_numpy(zero_copy_only=False))
        checks.append(("hour", "hour must be YYMMDDHH", hour_ok))
        ts = pc.fill_null(ts, pa.scalar(0, pa.timestamp("s")))
        sparse = np.zeros((n, len(AVAZU_SPARSE)), np.int64)
        for j, name in enumerate(AVAZU_FIELDS):
            sparse[:, j] = hash_strings32(table.column(name))
        sparse[:, -2] = pc.hour(ts).to_numpy(zero_copy_only=False)
        sparse[:, -1] = pc.day_of_week(ts).to_numpy(zero_copy_only=False)
        hour_num = pc.cast(pc.if_else(pa.array(hour_ok), hour, "0"), pa.int64()).to_numpy()
        return Block(label, np.zeros((n, 0), np.float32), sparse, checks, {"hour": hour_num})

    def show(self, value: int) -> str:  # a hashed string: its 32-bit hash is all the model keeps
        return "(missing)" if value == MISSING_ID else f"hash {value:08x}"

    def request_columns(self) -> list[str]:
        return ["hour", *AVAZU_FIELDS]

    def example(self) -> dict[str, object]:
        return {**super().example(), "hour": 14102100.0}

    def numeric_columns(self) -> set[str]:  # integer fields: a JSON number means its decimal text
        return {"hour", "C1", "banner_pos", "device_type", "device_conn_type", *(f"C{i}" for i in range(14, 22))}


AVAZU = Avazu()


def convert_avazu(inputs: list[str], out_dir: str | Path, *, test_fraction: float = 1 / 7,
                  progress: bool = True, overwrite: bool = False) -> DatasetMeta:
    """``cafe-dist data avazu``: :meth:`ClickLogFormat.convert` of the Avazu format."""
    return AVAZU.convert(inputs, out_dir, test_fraction=test_fraction, progress=progress,
                         overwrite=overwrite)
