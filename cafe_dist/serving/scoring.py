"""``cafe-dist evaluate`` and ``cafe-dist predict``: an exported model over a converted dataset's
split or a raw click-log file, streamed in batches (a CriteoTB day never has to fit in memory).

A raw file (of the model's format: :func:`cafe_dist.data.formats.format_of`) is converted first,
exactly as ``cafe-dist data`` would (same parsing, same dense
transform, malformed lines skipped and listed), into a temporary dataset whose raw values the model
then reads as training did: nothing of the new file's own statistics is used.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.nn.functional import binary_cross_entropy_with_logits
from torchmetrics.classification import BinaryAUROC

from cafe_dist.data import storage
from cafe_dist.data.formats import format_of
from cafe_dist.data.schema import BAD_ROWS_FILE, META_FILE, DatasetMeta
from cafe_dist.errors import BadInputError
from cafe_dist.outputs import replaced_on_success
from cafe_dist.progress import row_bar
from cafe_dist.serving.model import ServedModel

log = logging.getLogger("cafe_dist.serving")


@dataclass(frozen=True)
class RawBatch:
    dense: np.ndarray  # (B, n_dense) float32, already log(1+x)
    raw: np.ndarray  # (F, B) int64 raw categorical values
    labels: np.ndarray  # (B,) int8, -1 when unlabeled


@dataclass(frozen=True)
class Source:
    """Where rows come from: a dataset directory and its split, with what a conversion reported."""

    data_dir: str
    split: str
    meta: DatasetMeta
    bad_rows: int
    bad_rows_file: str | None

    def batches(self, batch_size: int, meta: DatasetMeta) -> Iterator[RawBatch]:
        """``meta``: the model's; the source must have its features."""
        missing = [c for c in (*meta.dense_features, *meta.sparse_features)
                   if c not in (*self.meta.dense_features, *self.meta.sparse_features)]
        if missing:
            raise BadInputError(f"{self.data_dir}: lacks the model's features {', '.join(missing)} "
                             f"(a {self.meta.format} dataset; the model was trained on {meta.format})")
        columns = ["label", *meta.dense_features, *meta.sparse_features]
        for path in storage.list_files(storage.join(self.data_dir, self.split), ".parquet"):
            with storage.open_input_file(path) as f:
                for b in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns):
                    dense = np.stack([b.column(c).to_numpy(zero_copy_only=False) for c in meta.dense_features],
                                     axis=1) if meta.dense_features else np.zeros((b.num_rows, 0), np.float32)
                    raw = np.stack([b.column(c).to_numpy(zero_copy_only=False) for c in meta.sparse_features])
                    yield RawBatch(dense.astype(np.float32, copy=False), raw.astype(np.int64, copy=False),
                                   b.column("label").to_numpy(zero_copy_only=False))


@contextlib.contextmanager
def open_source(location: str, model_meta: DatasetMeta, split: str = "test") -> Iterator[Source]:
    """A converted dataset (its ``split``), or a raw file of the model's format converted into a
    temporary dataset for the duration (all its rows)."""
    if storage.is_file(storage.join(location, META_FILE)):
        meta = DatasetMeta.load(location)
        if meta.rows.get(split, 0) == 0:
            have = ", ".join(f"{k} ({n:,} rows)" for k, n in meta.rows.items() if n) or "none"
            state = "is empty" if split in meta.rows else "does not exist"
            raise BadInputError(f"{location}: its {split!r} split {state}; splits with rows: {have}. Choose one "
                                "with --split")
        yield Source(location, split, meta, 0, None)
        return
    if not Path(location).is_file():
        raise FileNotFoundError(f"{location}: neither a converted dataset (no {META_FILE}) nor a file")
    tmp = Path(tempfile.mkdtemp(prefix="cafe-dist-input-"))
    try:  # parsed by the model's own format, with the options its data was converted with
        meta = format_of(model_meta).convert([location], tmp / "data", test_fraction=0.0)
        yield Source(str(tmp / "data"), "train", meta, meta.bad_rows, str(tmp / "data" / BAD_ROWS_FILE))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bad_rows_path(out: str | Path) -> Path:
    """Where ``predict`` lists the malformed lines of its input, beside its output."""
    out = Path(out)
    return out.with_name(out.stem + ".bad_rows.tsv")


def _report_bad(src: Source, keep_next_to: Path | None) -> str | None:
    if keep_next_to is not None and not src.bad_rows:  # an earlier run's list would describe other input
        bad_rows_path(keep_next_to).unlink(missing_ok=True)
    if not src.bad_rows:
        return None
    kept = None
    if keep_next_to is not None and src.bad_rows_file:
        kept = str(bad_rows_path(keep_next_to))
        with replaced_on_success(kept) as tmp:
            shutil.copyfile(src.bad_rows_file, tmp)
    log.warning("%s malformed line(s) skipped%s", f"{src.bad_rows:,}",
                f"; line numbers and reasons in {kept}" if kept else "")
    return kept


def evaluate(model: ServedModel, location: str, split: str = "test", batch_size: int = 4096) -> dict[str, Any]:
    """Test AUC and logloss of ``model`` on labelled rows."""
    auroc = BinaryAUROC()
    loss, rows, t0 = 0.0, 0, time.perf_counter()
    with open_source(location, model.meta, split) as src:
        if not src.meta.labeled:
            raise BadInputError(f"{location}: its rows have no click labels, so AUC and logloss cannot be computed; "
                                "`cafe-dist predict` scores unlabeled rows")
        with row_bar("evaluate", src.meta.rows[src.split], leave=False) as bar:
            for b in src.batches(batch_size, model.meta):
                logits = model.logits(b.dense, b.raw).cpu()
                labels = torch.from_numpy(b.labels.astype(np.float32))
                auroc.update(torch.sigmoid(logits), labels.long())
                loss += float(binary_cross_entropy_with_logits(logits, labels, reduction="sum"))
                rows += len(labels)
                bar.update(len(labels))
        seconds = time.perf_counter() - t0
        _report_bad(src, None)
        return {"auc": float(auroc.compute()), "logloss": loss / max(rows, 1), "rows": rows,
                "bad_rows": src.bad_rows, "rows_per_s": rows / seconds, "seconds": seconds}


def predict(model: ServedModel, location: str, out: str | Path, split: str = "test",
            batch_size: int = 4096) -> dict[str, Any]:
    """Scores of every row into Parquet ``out``: ``score``, plus ``label`` when the rows have one.
    ``out`` appears whole when every row is scored (written beside it, then renamed), or not at all;
    the caller checked it (:func:`cafe_dist.outputs.check_file`: never the input)."""
    out = Path(out)
    rows, t0 = 0, time.perf_counter()
    with open_source(location, model.meta, split) as src:
        schema = pa.schema([("score", pa.float32())] + ([("label", pa.int8())] if src.meta.labeled else []))
        with replaced_on_success(out) as tmp, pq.ParquetWriter(tmp, schema) as writer, \
                row_bar("predict", src.meta.rows[src.split], leave=False) as bar:
            for b in src.batches(batch_size, model.meta):
                cols = [pa.array(model.score(b.dense, b.raw))]
                if src.meta.labeled:
                    cols.append(pa.array(b.labels.astype(np.int8)))
                writer.write_table(pa.Table.from_arrays(cols, schema=schema))
                rows += len(b.labels)
                bar.update(len(b.labels))
        bad = _report_bad(src, out)
    return {"rows": rows, "out": str(out), "bad_rows": src.bad_rows, "bad_rows_file": bad,
            "rows_per_s": rows / (time.perf_counter() - t0)}
