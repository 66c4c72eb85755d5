"""Streaming Parquet writer shared by every converter and the generator: one pass, map-only.

Good rows go, in source order, straight into Parquet parts of ``ROWS_PER_PART`` rows, each part
with its own per-feature distinct counters (:mod:`cafe_dist.data.distinct`). Once the row count is
known, ``finalize`` cuts the sequence at the split (the last ``test_fraction`` of rows is test, as in
the CAFE paper): parts move into ``train/`` or ``test/`` by rename, and the one part the cut falls
in is rewritten as two. The train split's distinct counts are the merge of its parts' counters (the
cut part's train rows counted again: one part, our own output). Nothing is aggregated over ids:
compressed methods read the raw values, and the only id list kept is ``values.parquet``, the exact
values of the features small enough to count exactly (see :mod:`cafe_dist.data.schema`).

A part's counters are merged into the train split's as soon as the part lies before any possible
cut (the rows so far times ``1 - test_fraction``), so memory holds the counters of the last
``test_fraction`` of parts only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cafe_dist.data.distinct import FeatureCounters
from cafe_dist.data.schema import BAD_ROWS_FILE, SPLITS, VALUES_FILE, DatasetMeta
from cafe_dist.data.vocabulary import write_values
from cafe_dist.errors import BadInputError

ROWS_PER_PART = 1 << 20
# Rows per Parquet row group: what a training worker reads at least (cafe_dist.data.reader), so a
# worker's share of the split is read without its neighbours' rows at batch sizes from this up;
# smaller groups read slower (8,192: 0.6x the rate of 65,536, measured in BENCHMARKS.md)
ROW_GROUP_ROWS = 1 << 16
PARTS_DIR = "_parts"  # parts before the split; gone once the dataset is complete


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


@dataclass
class Part:
    """One written part, in source order: its rows, and its distinct counters (None once merged into
    the train split's, ``merged``, or when not kept: such a part is counted again if it is train)."""

    path: Path
    rows: int
    counters: FeatureCounters | None
    merged: bool = False


class PartSink:
    """Good rows appended to Parquet parts (``<directory>/<prefix>-NNNNN.parquet``, ``ROWS_PER_PART``
    rows each) with per-part distinct counters; rejected lines (source, line number, reason, raw
    text) to a TSV file. Memory stays one batch plus the counters."""

    def __init__(self, directory: Path, bad_path: Path, schema: pa.Schema, dense: list[str], sparse: list[str],
                 extra_names: list[str] | None = None, bad_header: bool = True, prefix: str = "part",
                 on_part=None) -> None:
        self.dir, self.prefix, self.schema = Path(directory), prefix, schema
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dense, self.sparse = list(dense), list(sparse)
        self.extra_names = extra_names or []
        self.on_part = on_part  # called with each Part as it closes
        self.parts: list[Part] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_part = 0
        self._pending: list[pa.Table] = []  # rows of the open part not yet written: whole row groups only
        self._pending_rows = 0
        self._counters: FeatureCounters | None = None
        self.bad_file = open(bad_path, "w")  # noqa: SIM115 (closed in close)
        if bad_header:
            self.bad_file.write("source\tline\treason\traw\n")
        self.good = self.bad = 0
        self.first_bad: list[str] = []  # a few rejected lines, for a message when every line is bad

    def add_rows(self, label: np.ndarray, dense: np.ndarray, sparse: np.ndarray,
                 extra: dict[str, np.ndarray] | None = None) -> None:
        """Append good rows: label (n,), dense (n, n_dense) float32, sparse (n, n_sparse) int64."""
        n = len(label)
        if n == 0:
            return
        cols = [pa.array(label.astype(np.int8))]
        cols += [pa.array(dense[:, j].astype(np.float32)) for j in range(len(self.dense))]
        cols += [pa.array(sparse[:, j].astype(np.int64)) for j in range(len(self.sparse))]
        cols += [pa.array(extra[name]) for name in self.extra_names] if extra else []
        table = pa.Table.from_arrays(cols, schema=self.schema)
        at = 0
        while at < n:  # fill the open part, close it when full
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.dir / f"{self.prefix}-{len(self.parts):05d}.parquet", self.schema)
                self._counters, self._rows_in_part = FeatureCounters(self.sparse), 0
            take = min(n - at, ROWS_PER_PART - self._rows_in_part)
            self._write(table.slice(at, take))
            self._counters.add(sparse[at:at + take])
            self._rows_in_part += take
            at += take
            if self._rows_in_part >= ROWS_PER_PART:
                self._close_part()
        self.good += n

    def _write(self, table: pa.Table) -> None:
        """Buffer rows and write them in row groups of ``ROW_GROUP_ROWS`` (the last one of a part
        shorter): input chunks of any size give the same row groups."""
        self._pending.append(table)
        self._pending_rows += table.num_rows
        whole = self._pending_rows - self._pending_rows % ROW_GROUP_ROWS
        if whole:
            joined = pa.concat_tables(self._pending)
            self._writer.write_table(joined.slice(0, whole), row_group_size=ROW_GROUP_ROWS)
            rest = joined.slice(whole)
            self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def _close_part(self) -> None:
        if self._pending_rows:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=ROW_GROUP_ROWS)
        self._pending, self._pending_rows = [], 0
        self._writer.close()
        part = Part(Path(self._writer.where), self._rows_in_part, self._counters)
        self.parts.append(part)
        self._writer, self._counters = None, None
        if self.on_part is not None:
            self.on_part(part)

    def add_bad(self, source: str, lines: list[int | None], reasons: list[str], raws: list[str]) -> None:
        for line, reason, raw in zip(lines, reasons, raws):
            raw = raw.replace("\t", "\\t").replace("\n", "\\n")
            self.bad_file.write(f"{source}\t{'' if line is None else line}\t{reason}\t{raw[:500]}\n")
            if len(self.first_bad) < 3:
                self.first_bad.append(f"{source} line {line}: {reason}")
        self.bad += len(lines)

    def close(self) -> list[Part]:
        if self._writer is not None:
            self._close_part()
        self.bad_file.close()
        return self.parts


def raw_schema(dense: list[str], sparse: list[str], extra_columns: dict[str, pa.DataType] | None = None) -> pa.Schema:
    fields = [pa.field("label", pa.int8())]
    fields += [pa.field(n, pa.float32()) for n in dense]
    fields += [pa.field(n, pa.int64()) for n in sparse]
    fields += [pa.field(n, t) for n, t in (extra_columns or {}).items()]
    return pa.schema(fields)


def check_split(rows: int, n_train: int, test_fraction: float) -> None:
    """Refuse a split a run could not use: no training rows, or a test split asked for that holds
    no rows (training would fail later, in a worker, or report no AUC)."""
    if n_train <= 0:
        raise BadInputError(f"--test-fraction {test_fraction:g} leaves none of the {rows:,} rows for training (the "
                            f"test split takes them all); choose a fraction below {1 - 1 / max(rows, 1):.6g}, e.g. "
                            "the default 1/7")
    if test_fraction > 0 and n_train == rows:
        raise BadInputError(f"--test-fraction {test_fraction:g} of {rows:,} row(s) rounds to no test rows; give "
                            f"at least {int(np.ceil(0.5 / test_fraction)):,} rows, or --test-fraction 0 for a dataset "
                            "without a test split")


def surely_train(rows_so_far: int, test_fraction: float) -> int:
    """Rows from the start that are train whatever the final row count (it is at least
    ``rows_so_far``, and the test split is ``round(rows * test_fraction)`` rows at the end)."""
    return max(int(np.floor(rows_so_far * (1 - test_fraction))) - 1, 0)


def split_parts(out: Path, parts: list[Part], n_train: int, sparse: list[str], schema: pa.Schema,
                train_counters: FeatureCounters) -> FeatureCounters:
    """Move ``parts`` (in source order) into ``train/`` and ``test/``, cutting the part that row
    ``n_train`` falls in; returns ``train_counters`` with every train part's counters merged."""
    dirs = {s: out / s for s in SPLITS}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    index = dict.fromkeys(SPLITS, 0)

    def place(split: str, path: Path | None, table: pa.Table | None = None) -> None:
        target = dirs[split] / part_name(index[split])
        if path is not None:
            path.replace(target)
        else:
            pq.write_table(table, target, row_group_size=ROW_GROUP_ROWS)
        index[split] += 1

    offset = 0
    for part in parts:
        end = offset + part.rows
        if end <= n_train:
            if part.counters is not None:
                train_counters.merge(part.counters)
            elif not part.merged:
                train_counters.add(_sparse(pq.read_table(part.path, columns=sparse), sparse))
            place("train", part.path)
        elif offset >= n_train:
            place("test", part.path)
        else:  # the cut: its train rows counted again, from the part itself
            table = pq.read_table(part.path)
            cut = n_train - offset
            head = table.slice(0, cut)
            train_counters.add(_sparse(head, sparse))
            place("train", None, head)
            place("test", None, table.slice(cut))
            part.path.unlink()
        offset = end
    for split in SPLITS:  # an empty split still gets a readable, schema-carrying part
        if index[split] == 0:
            pq.write_table(schema.empty_table(), dirs[split] / part_name(0))
    return train_counters


def _sparse(table: pa.Table, sparse: list[str]) -> np.ndarray:
    return np.stack([table.column(f).to_numpy() for f in sparse], axis=1)


def finish_dataset(out: Path, parts: list[Part], train_counters: FeatureCounters, *, fmt: str, dense: list[str],
                   sparse: list[str], schema: pa.Schema, good: int, bad: int, test_fraction: float,
                   labeled: bool, sources: list[str], extra: dict) -> DatasetMeta:
    """Split ``parts``, write ``values.parquet`` and ``meta.json``: the end of every conversion."""
    n_test = int(round(good * test_fraction))
    n_train = good - n_test
    check_split(good, n_train, test_fraction)
    counters = split_parts(out, parts, n_train, sparse, schema, train_counters).counters
    listed = {f: c.values() for f, c in counters.items() if c.is_exact}
    write_values(str(out / VALUES_FILE), sparse, listed)
    distinct = {f: counters[f].count() for f in sparse}
    meta = DatasetMeta(
        format=fmt, dense_features=dense, sparse_features=sparse,
        cardinality={f: n + 1 for f, n in distinct.items()},  # + row 0: values a full table never saw
        raw_distinct=distinct, rows={"train": n_train, "test": n_test}, bad_rows=bad, labeled=labeled,
        sources=sources, extra=extra, distinct_counted={f: counters[f].how for f in sparse})
    meta.save(out)
    return meta


class DatasetWriter:
    """Collects good rows and bad-line records; ``finalize`` writes the dataset layout."""

    def __init__(
        self,
        out_dir: str | Path,
        fmt: str,
        dense_features: list[str],
        sparse_features: list[str],
        *,
        test_fraction: float,
        labeled: bool = True,
        sources: list[str] | None = None,
        extra_columns: dict[str, pa.DataType] | None = None,
        extra_meta: dict | None = None,
        progress: bool = True,
    ) -> None:
        if not 0.0 <= test_fraction < 1.0:
            raise BadInputError(f"--test-fraction must be in [0, 1), got {test_fraction}")
        self.out = Path(out_dir)  # a fresh staging directory (cafe_dist.data.target.staged_dataset)
        self.out.mkdir(parents=True, exist_ok=True)
        self.fmt = fmt
        self.dense = list(dense_features)
        self.sparse = list(sparse_features)
        self.test_fraction = test_fraction
        self.labeled = labeled
        self.sources = sources or []
        self.extra_meta = extra_meta or {}
        self.progress = progress  # (the callers' bars show the parse; finalize only renames)
        self.schema = raw_schema(self.dense, self.sparse, extra_columns)
        self.train_counters = FeatureCounters(self.sparse)
        self._merged = self._merged_rows = 0  # parts whose counters train_counters holds, and their rows
        self.sink = PartSink(self.out / PARTS_DIR, self.out / BAD_ROWS_FILE, self.schema, self.dense, self.sparse,
                             list((extra_columns or {}).keys()), on_part=self._settle)
        self.add_rows, self.add_bad = self.sink.add_rows, self.sink.add_bad

    @property
    def good(self) -> int:
        return self.sink.good

    @property
    def bad(self) -> int:
        return self.sink.bad

    def _settle(self, _part: Part) -> None:
        """Merge the counters of parts that are train whatever the final row count."""
        train, parts = surely_train(self.sink.good, self.test_fraction), self.sink.parts
        while self._merged < len(parts) and self._merged_rows + parts[self._merged].rows <= train:
            part = parts[self._merged]
            self.train_counters.merge(part.counters)
            part.counters, part.merged = None, True
            self._merged_rows += part.rows
            self._merged += 1

    def finalize(self) -> DatasetMeta:
        parts = self.sink.close()
        if self.good == 0:
            detail = (f"all {self.bad:,} lines were malformed, e.g. " + "; ".join(self.sink.first_bad)
                      if self.bad else "the input holds no rows")
            raise BadInputError(f"no usable rows: {detail}. Check that the input is in {self.fmt} format.")
        meta = finish_dataset(self.out, parts, self.train_counters, fmt=self.fmt, dense=self.dense,
                              sparse=self.sparse, schema=self.schema, good=self.good, bad=self.bad,
                              test_fraction=self.test_fraction, labeled=self.labeled, sources=self.sources,
                              extra=self.extra_meta)
        (self.out / PARTS_DIR).rmdir()
        return meta
