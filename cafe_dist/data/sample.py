"""A uniform random sample of a converted dataset's train rows, read without loading the split.

Methods that learn something from the data before training (LMA's co-occurrence signatures) need
rows drawn uniformly over the whole split, not its head: click logs are in time order. Row numbers
are drawn first; then each Parquet file is streamed batch by batch and only its drawn rows kept,
here (one process) or as a Ray Data job with one task per file (``address``: a CriteoTB train split
is hundreds of GB of Parquet that one machine should not read). Both give the same sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.parquet as pq

from cafe_dist.data import storage
from cafe_dist.data.schema import DatasetMeta
from cafe_dist.progress import row_bar


def _file_rows(path: str, columns: list[str], positions: np.ndarray) -> np.ndarray:
    """(len(positions), F) ids at the sorted row ``positions`` of one Parquet file."""
    out = np.empty((len(positions), len(columns)), dtype=np.int64)
    start = filled = 0
    with storage.open_input_file(path) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=1 << 16, columns=columns):
            end = start + batch.num_rows
            lo, hi = np.searchsorted(positions, [start, end])
            if hi > lo:
                local = positions[lo:hi] - start
                for j, name in enumerate(columns):
                    out[filled:filled + hi - lo, j] = batch.column(name).to_numpy()[local]
                filled += hi - lo
            start = end
    if filled != len(positions):
        raise ValueError(f"{path}: holds {start:,} rows, fewer than its part of meta.json's count; "
                         "the dataset is incomplete: convert it again")
    return out


def _plan(data_dir: str, meta: DatasetMeta, rows: int, seed: int) -> list[dict[str, Any]]:
    """Per train file: its path and the positions (within it) of the rows drawn there."""
    total = meta.rows["train"]
    pick = np.sort(np.random.default_rng(seed).choice(total, size=min(int(rows), total), replace=False))
    files = storage.list_files(storage.join(data_dir, "train"), ".parquet")
    if not files:
        raise FileNotFoundError(f"{storage.join(data_dir, 'train')}: no Parquet files to sample")
    plan, start = [], 0
    for path in files:
        with storage.open_input_file(path) as f:
            n = pq.ParquetFile(f).metadata.num_rows
        lo, hi = np.searchsorted(pick, [start, start + n])
        if hi > lo:
            plan.append({"path": path, "positions": pick[lo:hi] - start})
        start += n
    if start != total:
        raise ValueError(f"{data_dir}: meta.json says {total:,} train rows but the train files hold {start:,}; "
                         "the dataset is incomplete: convert it again")
    return plan


def sample_train_ids(data_dir: str, meta: DatasetMeta, rows: int, seed: int, progress: bool = True,
                     address: str | None = None) -> np.ndarray:
    """(R, F) int64: the raw values of ``R = min(rows, train rows)`` train rows
    drawn uniformly without replacement by ``seed``, in stream order; columns follow
    ``meta.sparse_features``. ``address``: draw them with a Ray Data job on that cluster ("local":
    a local one; an already connected driver uses its cluster)."""
    columns = list(meta.sparse_features)
    plan = _plan(data_dir, meta, rows, seed)
    if address is not None:
        return _sample_with_ray(plan, columns, address)
    parts = []
    with row_bar("sample train rows", sum(len(p["positions"]) for p in plan), enabled=progress, leave=False) as bar:
        for p in plan:
            parts.append(_file_rows(p["path"], columns, p["positions"]))
            bar.update(len(p["positions"]))
    return np.concatenate(parts) if parts else np.empty((0, len(columns)), np.int64)


def _sample_with_ray(plan: list[dict[str, Any]], columns: list[str], address: str) -> np.ndarray:
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address)

    def read(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [_file_rows(str(path), columns, np.asarray(pos)) for path, pos in zip(batch["path"], batch["positions"])]
        return {"order": batch["order"], "ids": np.array(ids + [None], dtype=object)[:-1]}

    items = [{"order": i, "path": p["path"], "positions": p["positions"]} for i, p in enumerate(plan)]
    out = ray.data.from_items(items, override_num_blocks=max(len(items), 1)).map_batches(read, batch_size=1).take_all()
    parts = [r["ids"] for r in sorted(out, key=lambda r: r["order"])]
    return np.concatenate(parts) if parts else np.empty((0, len(columns)), np.int64)
