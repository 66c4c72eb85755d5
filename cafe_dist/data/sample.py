"""A uniform random sample of a converted dataset's train rows, read without loading the split.

Methods that learn something from the data before training (LMA's co-occurrence signatures) need
rows drawn uniformly over the whole split, not its head: click logs are in time order. Row numbers
are drawn first, then each Parquet file is streamed batch by batch and only the drawn rows kept.
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from cafe_dist.data import storage
from cafe_dist.data.schema import DatasetMeta, idx_column


def sample_train_ids(data_dir: str, meta: DatasetMeta, rows: int, seed: int,
                     progress: bool = True) -> np.ndarray:
    """(R, F) int64: the contiguous ids (``<feature>_idx``) of ``R = min(rows, train rows)`` train rows
    drawn uniformly without replacement by ``seed``, in stream order; columns follow
    ``meta.sparse_features``."""
    total = meta.rows["train"]
    take = min(int(rows), total)
    pick = np.sort(np.random.default_rng(seed).choice(total, size=take, replace=False))
    columns = [idx_column(f) for f in meta.sparse_features]
    out = np.empty((take, len(columns)), dtype=np.int64)
    files = storage.list_files(storage.join(data_dir, "train"), ".parquet")
    if not files:
        raise FileNotFoundError(f"{storage.join(data_dir, 'train')}: no Parquet files to sample")
    start = filled = 0
    with tqdm(total=take, desc="sample train rows", unit="row", unit_scale=True, file=sys.stderr,
              disable=not progress, leave=False) as bar:
        for path in files:
            with storage.open_input_file(path) as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=1 << 16, columns=columns):
                    end = start + batch.num_rows
                    lo, hi = np.searchsorted(pick, [start, end])
                    if hi > lo:
                        local = pick[lo:hi] - start
                        for j, name in enumerate(columns):
                            out[filled:filled + hi - lo, j] = batch.column(name).to_numpy()[local]
                        filled += hi - lo
                        bar.update(hi - lo)
                    start = end
    if filled != take:
        raise ValueError(f"{data_dir}: meta.json says {total:,} train rows but the train files hold {start:,}; "
                         "the dataset is incomplete: convert it again")
    return out
