"""Checks that stop bad input before it reaches a model: each error names the file or row, the
column, what was found and what to do. Nothing here loops per row: whole columns are checked at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cafe_dist.data import storage
from cafe_dist.data.reader import SplitFiles
from cafe_dist.data.schema import SPLITS, DatasetMeta
from cafe_dist.errors import BadInputError


def check_parquet_schema(data_dir: str | Path, meta: DatasetMeta) -> dict[str, SplitFiles]:
    """Every split directory holds Parquet files with the label, dense and id columns meta.json
    declares, with numeric types (the driver runs this before any worker starts); returns each
    split's index of row groups, read from the same footers (what the workers read by)."""
    ids = list(meta.sparse_features)
    out = {}
    for split in SPLITS:
        files = storage.list_files(storage.join(data_dir, split), ".parquet")
        if not files:
            raise BadInputError(f"{storage.join(data_dir, split)} holds no Parquet files (meta.json lists {meta.rows.get(split, 0):,} "
                                f"{split} rows); re-create {data_dir} with `cafe-dist data ... --out {data_dir}`")
        rows, footers = 0, []
        for path in files:
            try:
                with storage.open_input_file(path) as f:
                    footer = pq.read_metadata(f)
            except (pa.ArrowInvalid, OSError) as e:
                raise BadInputError(f"{path}: not a readable Parquet file ({e})") from None
            schema, rows = footer.schema.to_arrow_schema(), rows + footer.num_rows
            footers.append(footer)
            missing = [c for c in ["label", *meta.dense_features, *ids] if c not in schema.names]
            if missing:
                raise BadInputError(f"{path}: missing column(s) {', '.join(missing[:8])}"
                                    f"{' ...' if len(missing) > 8 else ''}; meta.json expects label, "
                                    f"{len(meta.dense_features)} dense and {len(ids)} id columns. Was this file "
                                    "written by `cafe-dist data`, or for another dataset?")
            for col in ["label", *meta.dense_features]:
                t = schema.field(col).type
                if not (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)):
                    raise BadInputError(f"{path}: column {col!r} has type {t}, expected a number")
            for col in ids:
                t = schema.field(col).type
                if not pa.types.is_integer(t):
                    raise BadInputError(f"{path}: id column {col!r} has type {t}, expected integers "
                                        f"(ids are mapped to integers by `cafe-dist data`)")
        if rows != meta.rows.get(split, 0):  # steps, epochs and shards are planned from meta.json's count
            raise BadInputError(
                f"{storage.join(data_dir, split)}: its Parquet files hold {rows:,} rows but meta.json says "
                f"{meta.rows.get(split, 0):,}; files were removed, added or truncated since conversion. Convert "
                f"again into {data_dir} (`cafe-dist data ... --out {data_dir} --overwrite`)")
        out[split] = SplitFiles.from_footers(files, footers)
    return out


class BatchValidator:
    """Per-batch checks of what the schema cannot promise: finite dense values, 0/1 labels, and
    raw values inside the 32-bit range (or the missing marker)."""

    def __init__(self, meta: DatasetMeta, id_cols: list[str]) -> None:
        self.id_cols = id_cols
        self.high = np.full(len(id_cols), meta.missing_id + 1, np.int64)
        self.range_note = f"raw ids are 32-bit values or {meta.missing_id} for missing"

    def __call__(self, labels: np.ndarray, dense: np.ndarray | None, dense_cols: list[str], ids: np.ndarray) -> None:
        """``ids``: (features, rows). Raises BadInputError for the first bad value found."""
        # cheap reductions first (a batch of 65,536 rows is checked in a few milliseconds); the
        # element-wise search for the bad row runs only when one is there
        if len(labels) and (labels.min() < 0 or labels.max() > 1 or
                            (labels.dtype.kind == "f" and not np.isin(labels, (0, 1)).all())):
            bad = ~((labels == 0) | (labels == 1))
            i = int(np.argmax(bad))
            raise BadInputError(f"row {i}: label is {labels[i].item()!r}; labels must be 0 or 1")
        if dense is not None and dense.size and not np.isfinite(dense.sum(axis=0)).all() \
                and not np.isfinite(dense).all():
            i, j = (int(x) for x in np.argwhere(~np.isfinite(dense))[0])
            raise BadInputError(f"row {i}: dense column {dense_cols[j]!r} is {dense[i, j]}; dense values must "
                                "be finite (`cafe-dist data` maps missing values to 0): fix or drop these rows")
        if ids.size and (ids.min() < 0 or (ids.max(axis=1) >= self.high).any()):
            out = (ids < 0) | (ids >= self.high[:, None])
            f, i = (int(x) for x in np.argwhere(out)[0])
            raise BadInputError(f"row {i}: id column {self.id_cols[f]!r} holds {ids[f, i]}, outside [0, "
                                f"{self.high[f]}) ({self.range_note}); the data and meta.json disagree: "
                                "re-convert the data, or train on the directory it was converted into")
