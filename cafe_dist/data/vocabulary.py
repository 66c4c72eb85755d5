"""Lists of raw values that own a table row: a dataset's values file, and ``full``'s vocabulary.

Compressed methods hash raw values and need no list, except for the features their budget keeps
uncompressed: those map each listed value to its own row (row = position in the sorted list + 1,
row 0 for any other value). Conversion lists the values of the features small enough to count
exactly (``values.parquet``). ``full`` needs every feature's list: when the dataset's file lists
them all and the run asks for no cap, that file is its vocabulary; otherwise
:func:`build_vocabulary` counts the train split's values once (the global pass this project
otherwise avoids, paid only by runs of ``full``) and keeps the values seen ``min_count`` times or
more, at most ``max_ids_per_feature`` per feature, the most frequent (MLPerf's per-feature cap, as
TorchRec's Criteo preprocessing offers with its frequency threshold). The file is kept beside the
dataset (``vocabulary/``) for the next run with the same settings.
"""

from __future__ import annotations

import io
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cafe_dist.data import storage
from cafe_dist.data.schema import SPLITS, VOCABULARY_DIR, DatasetMeta
from cafe_dist.progress import row_bar

log = logging.getLogger("cafe_dist.vocabulary")


def values_table(features: list[str], values: dict[str, np.ndarray], counts: dict[str, np.ndarray] | None = None
                 ) -> pa.Table:
    """A values file's rows: (feature index, value[, count]) of the features in ``values``."""
    listed = [(j, f) for j, f in enumerate(features) if f in values]
    cols = {
        "feature": np.concatenate([np.full(len(values[f]), j, np.int16) for j, f in listed] or [np.zeros(0, np.int16)]),
        "value": np.concatenate([values[f] for _, f in listed] or [np.zeros(0, np.int64)]).astype(np.int64),
    }
    if counts is not None:
        cols["count"] = np.concatenate([counts[f] for _, f in listed] or [np.zeros(0, np.int64)]).astype(np.int64)
    return pa.table(cols)


def write_values(location: str, features: list[str], values: dict[str, np.ndarray],
                 counts: dict[str, np.ndarray] | None = None) -> None:
    buf = io.BytesIO()  # no min/max statistics or Arrow schema: a few hundred bytes an export need not carry
    pq.write_table(values_table(features, values, counts), buf, write_statistics=False, store_schema=False)
    storage.write_bytes(location, buf.getvalue())


def read_values(location: str, features: list[str]) -> dict[str, np.ndarray]:
    """``features``' listed values (sorted, distinct) from a values file; a feature the file does
    not list is absent."""
    t = pq.read_table(io.BytesIO(storage.read_bytes(location)), columns=["feature", "value"])
    feature, value = t.column("feature").to_numpy().astype(np.int64), t.column("value").to_numpy().astype(np.int64)
    order = np.lexsort((value, feature))
    feature, value = feature[order], value[order]
    bounds = np.searchsorted(feature, np.arange(len(features) + 1))
    return {f: value[bounds[j]:bounds[j + 1]] for j, f in enumerate(features) if bounds[j + 1] > bounds[j]}


class CountMerger:
    """Exact value counts for one feature, merged in bulk so memory tracks distinct values."""

    def __init__(self) -> None:
        self.values = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_len = 0

    def add(self, ids: np.ndarray) -> None:
        u, c = np.unique(ids, return_counts=True)
        self._pending.append((u, c))
        self._pending_len += len(u)
        if self._pending_len > max(4_000_000, len(self.values)):
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        vals = np.concatenate([self.values] + [u for u, _ in self._pending])
        cnts = np.concatenate([self.counts] + [c for _, c in self._pending])
        self.values, inv = np.unique(vals, return_inverse=True)
        self.counts = np.bincount(inv, weights=cnts, minlength=len(self.values)).astype(np.int64)
        self._pending, self._pending_len = [], 0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._merge()
        return self.values, self.counts


def vocabulary_path(data_dir: str, max_ids_per_feature: int | None, min_count: int) -> str:
    cap = "all" if max_ids_per_feature is None else str(max_ids_per_feature)
    return storage.join(data_dir, VOCABULARY_DIR, f"vocab_max{cap}_min{min_count}.parquet")


def build_vocabulary(data_dir: str, meta: DatasetMeta, max_ids_per_feature: int | None = None,
                     min_count: int = 1, progress: bool = True) -> str:
    """Count every feature's train values, keep the vocabulary the settings ask for, write it
    beside the dataset (atomically; reused when it is there). Returns its location."""
    path = vocabulary_path(data_dir, max_ids_per_feature, min_count)
    if storage.is_file(path):
        return path
    t0 = time.perf_counter()
    features = list(meta.sparse_features)
    mergers = {f: CountMerger() for f in features}
    files = storage.list_files(storage.join(data_dir, SPLITS[0]), ".parquet")
    with row_bar("count values for full's vocabulary", meta.rows["train"], enabled=progress) as bar:
        for location in files:
            with storage.open_input_file(location) as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=1 << 18, columns=features):
                    for name in features:
                        mergers[name].add(batch.column(name).to_numpy())
                    bar.update(batch.num_rows)
    values, counts = {}, {}
    for f in features:
        v, c = mergers[f].result()
        keep = np.flatnonzero(c >= min_count)
        if max_ids_per_feature is not None and len(keep) > max_ids_per_feature:
            keep = keep[np.argsort(-c[keep], kind="stable")[:max_ids_per_feature]]  # the most frequent
            keep.sort()
        values[f], counts[f] = v[keep], c[keep]
    write_values(path, features, values, counts)
    log.info("full's vocabulary: %s values of %s features (min count %d, at most %s per feature) in %.1f s -> %s",
             f"{sum(len(v) for v in values.values()):,}", len(features), min_count,
             "no cap" if max_ids_per_feature is None else f"{max_ids_per_feature:,}", time.perf_counter() - t0, path)
    return path
