"""Criteo Kaggle / CriteoTB TSV: label, 13 integer and 26 hex categorical fields (39 fields in the
unlabeled test files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from cafe_dist.data.formats.base import Block, ClickLogFormat, Layout
from cafe_dist.data.parsing import dense_transform, parse_hex32, parse_int
from cafe_dist.data.schema import CRITEO_DENSE, CRITEO_SPARSE, MISSING_ID, DatasetMeta
from cafe_dist.data.textsource import first_line
from cafe_dist.errors import BadInputError


class Criteo(ClickLogFormat):
    name = "criteo"
    delimiter = "\t"

    @property
    def dense_features(self) -> list[str]:
        return list(CRITEO_DENSE)

    @property
    def sparse_features(self) -> list[str]:
        return list(CRITEO_SPARSE)

    def layout(self, path: str) -> Layout:
        n = len(first_line(path).split("\t"))
        if n not in (39, 40):
            raise BadInputError(
                f"{path}: the first line has {n} tab-separated fields; Criteo rows have 40 (label, I1..I13, "
                "C1..C26) or 39 (unlabeled test files). Is this a Criteo TSV file?")
        return Layout((["label"] if n == 40 else []) + CRITEO_DENSE + CRITEO_SPARSE, labeled=n == 40)

    def parse_block(self, table: pa.Table, labeled: bool) -> Block:
        n = table.num_rows
        checks = []
        if labeled:
            lab, present, ok = parse_int(table.column("label"))
            checks.append(("label", "label must be 0 or 1", present & ok & ((lab == 0) | (lab == 1))))
            label = lab.astype(np.int8)
        else:
            label = np.full(n, -1, np.int8)
        dense = np.zeros((n, len(CRITEO_DENSE)), np.float32)
        for j, name in enumerate(CRITEO_DENSE):
            values, present, ok = parse_int(table.column(name))
            checks.append((name, f"bad integer in {name}", ok))
            dense[:, j] = dense_transform(values, present)
        sparse = np.zeros((n, len(CRITEO_SPARSE)), np.int64)
        for j, name in enumerate(CRITEO_SPARSE):
            values, ok = parse_hex32(table.column(name))
            checks.append((name, f"bad hex value in {name}", ok))
            sparse[:, j] = values
        return Block(label, dense, sparse, checks)

    def show(self, value: int) -> str:
        return "(missing)" if value == MISSING_ID else f"{value:08x}"

    def example(self) -> dict[str, object]:
        return {**{c: 1.0 for c in CRITEO_DENSE}, **{c: "68fd1e64" for c in CRITEO_SPARSE}}


CRITEO = Criteo()


def labeled_layout(inputs: list[str]) -> bool:
    """Whether the Criteo ``inputs`` are labeled; all of them must agree."""
    return next(iter(CRITEO.layouts(inputs).values())).labeled


def parse_file(path: str, labeled: bool, sink, progress: bool = False) -> None:
    """Parse one Criteo TSV file into ``sink`` (``add_rows`` / ``add_bad``, e.g. a RawSink)."""
    columns = (["label"] if labeled else []) + CRITEO_DENSE + CRITEO_SPARSE
    CRITEO.parse_file(path, Layout(columns, labeled), sink, progress)


def convert_criteo(inputs: list[str], out_dir: str | Path, *, test_fraction: float = 1 / 7,
                   progress: bool = True, overwrite: bool = False) -> DatasetMeta:
    """``cafe-dist data criteo``: :meth:`ClickLogFormat.convert` of the Criteo format."""
    return CRITEO.convert(inputs, out_dir, test_fraction=test_fraction, progress=progress,
                          overwrite=overwrite)
