"""Columnar numpy batches (read by cafe_dist.data.reader) → model inputs, with no per-row Python."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torchrec import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from cafe_dist.data.schema import DatasetMeta
from cafe_dist.data.validate import BatchValidator


@dataclass(frozen=True)
class Batch(Pipelineable):
    """Model inputs; ``Pipelineable`` (``to``, ``record_stream``) for TorchRec's train pipeline."""

    dense: torch.Tensor  # (B, n_dense) float32; (B, 1) zeros when the data has no dense features
    sparse: KeyedJaggedTensor  # one id per feature per row
    labels: torch.Tensor  # (B,) float32
    index: int | None = None  # the run's step that trains on it (1-based), where a pipeline needs it

    def pinned(self) -> Batch:
        """In page-locked host memory: the copy to a GPU then runs asynchronously."""
        return replace(self, dense=self.dense.pin_memory(), sparse=self.sparse.pin_memory(),
                       labels=self.labels.pin_memory())

    def to(self, device: torch.device, non_blocking: bool = True) -> Batch:
        return replace(self, dense=self.dense.to(device, non_blocking=non_blocking),
                       sparse=self.sparse.to(device, non_blocking=non_blocking),
                       labels=self.labels.to(device, non_blocking=non_blocking))

    @staticmethod
    def to_proxy_tuple(model: torch.nn.Module) -> tuple:
        """What TorchRec's train pipeline traces ``model`` (the DLRM: ``forward(dense, sparse, index)``)
        with: placeholders named after the batch's fields, so it reads each argument off the batch."""
        from torch.fx._symbolic_trace import PHWithMeta

        return tuple(PHWithMeta(ph_key=name) for name in ("dense", "sparse", "index"))

    def record_stream(self, stream: torch.Stream) -> None:
        self.dense.record_stream(stream)
        self.sparse.record_stream(stream)
        self.labels.record_stream(stream)


def one_id_per_feature(keys: list[str], ids: np.ndarray) -> KeyedJaggedTensor:
    """The KJT of ``ids`` (F, B) int64: one id per feature per row, feature-major."""
    n = ids.shape[1]
    return KeyedJaggedTensor(keys=keys, values=torch.from_numpy(np.ascontiguousarray(ids).reshape(-1)),
                             lengths=torch.ones(len(keys) * n, dtype=torch.int32), stride=n)


class Collator:
    """Builds a KJT whose values are feature-major (all of feature 0's ids, then feature 1's, ...)."""

    def __init__(self, meta: DatasetMeta) -> None:
        self.dense_cols = list(meta.dense_features)
        self.keys = list(meta.sparse_features)
        self.id_cols = list(self.keys)  # raw values: every method maps them itself
        self.columns = ["label"] + self.dense_cols + self.id_cols
        self.validate = BatchValidator(meta, self.id_cols)

    def __call__(self, batch: dict[str, np.ndarray]) -> Batch:
        n = len(batch["label"])
        if self.dense_cols:
            dense = np.stack([batch[c] for c in self.dense_cols], axis=1).astype(np.float32, copy=False)
        else:
            dense = np.zeros((n, 1), np.float32)
        ids = np.stack([batch[c] for c in self.id_cols], axis=0).astype(np.int64, copy=False)
        self.validate(batch["label"], dense if self.dense_cols else None, self.dense_cols, ids)
        kjt = one_id_per_feature(self.keys, ids)
        labels = torch.from_numpy(batch["label"].astype(np.float32))
        return Batch(torch.from_numpy(dense), kjt, labels)
