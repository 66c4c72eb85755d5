"""Criteo Kaggle / CriteoTB TSV → Parquet (label, 13 integer, 26 hex categorical fields)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cafe_dist.data.parsing import dense_transform, parse_hex32, parse_int
from cafe_dist.data.schema import CRITEO_DENSE, CRITEO_SPARSE, DatasetMeta
from cafe_dist.data.target import staged_dataset
from cafe_dist.data.textsource import bad_row_text, first_line, parse_into
from cafe_dist.data.writer import DatasetWriter
from cafe_dist.errors import BadInputError


def _layout(path: str) -> bool:
    """True if the file is labeled (40 fields), False if unlabeled (39 fields)."""
    n = len(first_line(path).split("\t"))
    if n not in (39, 40):
        raise BadInputError(
            f"{path}: the first line has {n} tab-separated fields; Criteo rows have 40 (label, I1..I13, "
            "C1..C26) or 39 (unlabeled test files). Is this a Criteo TSV file?"
        )
    return n == 40


def labeled_layout(inputs: list[str]) -> bool:
    """Whether the inputs are labeled; all of them must agree."""
    if not inputs:
        raise BadInputError("no input files given")
    layouts = {p: _layout(p) for p in inputs}
    labeled = set(layouts.values())
    if len(labeled) > 1:
        raise BadInputError(f"mixing labeled (40-field) and unlabeled (39-field) files: {layouts}")
    return labeled.pop()


def parse_file(path: str, labeled: bool, sink, progress: bool = False) -> None:
    """Parse one Criteo TSV file into ``sink`` (``add_rows`` / ``add_bad``, e.g. a RawSink)."""
    names = (["label"] if labeled else []) + CRITEO_DENSE + CRITEO_SPARSE
    parse_into(path, names, "\t", sink, lambda tb: _convert_block(tb, names, labeled, sink, str(path)), progress)


def convert_criteo(
    inputs: list[str],
    out_dir: str | Path,
    *,
    test_fraction: float = 1 / 7,
    min_count: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> DatasetMeta:
    """Convert into ``out_dir``, which is only touched once the new dataset is complete (see
    :mod:`cafe_dist.data.target`); replacing a dataset there needs ``overwrite``."""
    labeled = labeled_layout(inputs)
    with staged_dataset(out_dir, overwrite) as stage:
        writer = DatasetWriter(stage, "criteo", CRITEO_DENSE, CRITEO_SPARSE, test_fraction=test_fraction,
                               labeled=labeled, min_count=min_count, sources=[str(p) for p in inputs],
                               progress=progress)
        for path in inputs:
            parse_file(path, labeled, writer, progress)
        return writer.finalize()


def _convert_block(tb, names: list[str], labeled: bool, writer, source: str) -> None:
    t = tb.table
    n = t.num_rows
    checks: list[tuple[str, np.ndarray]] = []  # (reason prefix, ok mask), in field order
    if labeled:
        lab, lab_present, lab_ok = parse_int(t.column("label"))
        checks.append(("label must be 0 or 1", lab_present & lab_ok & ((lab == 0) | (lab == 1))))
        label = lab.astype(np.int8)
    else:
        label = np.full(n, -1, np.int8)
    dense = np.zeros((n, len(CRITEO_DENSE)), np.float32)
    for j, name in enumerate(CRITEO_DENSE):
        values, present, ok = parse_int(t.column(name))
        checks.append((f"bad integer in {name}", ok))
        dense[:, j] = dense_transform(values, present)
    sparse = np.zeros((n, len(CRITEO_SPARSE)), np.int64)
    for j, name in enumerate(CRITEO_SPARSE):
        values, ok = parse_hex32(t.column(name))
        checks.append((f"bad hex value in {name}", ok))
        sparse[:, j] = values
    ok_mat = np.stack([ok for _, ok in checks], axis=1)
    good = ok_mat.all(axis=1)
    if not good.all():
        bad = np.flatnonzero(~good)
        first_bad = np.argmax(~ok_mat[bad], axis=1)
        raws = bad_row_text(t, bad, "\t")
        reasons = []
        for row, k, raw in zip(bad, first_bad, raws):
            field = names[k] if k < len(names) else "?"
            value = t.column(field).take([int(row)])[0].as_py() if field != "?" else ""
            reasons.append(f"{checks[k][0]}: {value!r}" if raw.strip("\t") else "empty line")
        writer.add_bad(source, tb.lines[bad].tolist(), reasons, raws)
    writer.add_rows(label[good], dense[good], sparse[good])
