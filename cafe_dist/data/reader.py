"""Rows ``[a, b)`` of a split, read straight from its Parquet files with pyarrow.

A training worker reads only the rows it trains (cafe_dist.train.row_order deals them out), and a
resumed run opens the split at its position: both need row-addressed reads, which a stream (Ray
Data's ``iter_batches``) cannot give. :class:`SplitFiles` is the split's index, built once on the
driver from the files' footers (the schema check reads them anyway): each file's row groups and
where they start in the split. :class:`RowReader` reads the row groups that hold a range of rows,
only the columns asked for, and keeps the last ones it read (consecutive batches of a rank usually
share a row group). ``bytes_read`` counts the compressed column chunks it read: what the input
bench compares with the split's size."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from cafe_dist.data import storage


@dataclass(frozen=True)
class SplitFiles:
    """The Parquet files of a split in order, and the first row of each row group in the split."""

    files: tuple[str, ...]
    group_file: np.ndarray  # (G,) index into files of each row group
    group_index: np.ndarray  # (G,) the row group's index within its file
    group_start: np.ndarray  # (G + 1,) first row of each row group in the split; the last entry is the row count

    @classmethod
    def from_footers(cls, files: list[str], footers: list[pq.FileMetaData]) -> SplitFiles:
        sizes = [[f.row_group(i).num_rows for i in range(f.num_row_groups)] for f in footers]
        group_file = np.repeat(np.arange(len(files)), [len(s) for s in sizes]).astype(np.int64)
        group_index = np.concatenate([np.arange(len(s)) for s in sizes] or [np.zeros(0)]).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(np.concatenate([np.asarray(s, np.int64) for s in sizes] or
                                                                [np.zeros(0, np.int64)]))]).astype(np.int64)
        return cls(tuple(files), group_file, group_index, starts)

    @classmethod
    def scan(cls, directory: str) -> SplitFiles:
        files = storage.list_files(directory, ".parquet")
        footers = []
        for path in files:
            with storage.open_input_file(path) as f:
                footers.append(pq.read_metadata(f))
        return cls.from_footers(files, footers)

    @property
    def rows(self) -> int:
        return int(self.group_start[-1])

    @property
    def row_group_rows(self) -> int:
        """The largest row group: the unit below which reading a range costs a whole group anyway."""
        return int(np.diff(self.group_start).max()) if len(self.group_start) > 1 else 1

    def groups_of(self, start: int, stop: int) -> range:
        """The row groups (split-wide indices) that hold rows ``[start, stop)``."""
        if stop <= start:
            return range(0)
        first = int(np.searchsorted(self.group_start, start, side="right")) - 1
        last = int(np.searchsorted(self.group_start, stop, side="left"))
        return range(first, last)


class RowReader:
    """Reads row ranges of one split (only ``columns``), as numpy columns."""

    def __init__(self, split: SplitFiles, columns: list[str], keep_groups: int = 4) -> None:
        self.split, self.columns, self.keep_groups = split, list(columns), keep_groups
        self._files: dict[int, pq.ParquetFile] = {}
        self._groups: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self.bytes_read = 0
        self.rows_read = 0  # rows of the row groups read (what was decoded, not what was asked for)

    def _file(self, i: int) -> pq.ParquetFile:
        if i not in self._files:
            if len(self._files) >= 2:  # a rank moves through the files in order
                self._files.pop(next(iter(self._files))).close()
            self._files[i] = pq.ParquetFile(storage.open_input_file(self.split.files[i]))
        return self._files[i]

    def _group(self, g: int) -> dict[str, np.ndarray]:
        if g in self._groups:
            self._groups.move_to_end(g)
            return self._groups[g]
        f = self._file(int(self.split.group_file[g]))
        index = int(self.split.group_index[g])
        table = f.read_row_group(index, columns=self.columns)
        meta = f.metadata.row_group(index)
        names = set(self.columns)
        self.bytes_read += sum(meta.column(c).total_compressed_size for c in range(meta.num_columns)
                               if meta.column(c).path_in_schema in names)
        self.rows_read += table.num_rows
        cols = {name: table.column(name).to_numpy() for name in self.columns}
        self._groups[g] = cols
        while len(self._groups) > self.keep_groups:
            self._groups.popitem(last=False)
        return cols

    def read(self, intervals: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> dict[str, np.ndarray]:
        """The rows of ``intervals`` (each ``[start, stop)`` in the split), in that order."""
        pieces: list[dict[str, np.ndarray]] = []
        starts = self.split.group_start
        for start, stop in intervals:
            for g in self.split.groups_of(start, stop):
                cols = self._group(g)
                lo, hi = max(start, int(starts[g])) - int(starts[g]), min(stop, int(starts[g + 1])) - int(starts[g])
                pieces.append({k: v[lo:hi] for k, v in cols.items()})
        if len(pieces) == 1:
            return pieces[0]
        if not pieces:
            return {k: np.zeros(0) for k in self.columns}
        return {k: np.concatenate([p[k] for p in pieces]) for k in self.columns}

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._groups.clear()
