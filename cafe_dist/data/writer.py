"""Streaming Parquet writer shared by every converter and the generator.

Pass 1 appends good rows to one raw Parquet file in source order (memory stays one batch).
``finalize`` then knows the row count, so it can split sequentially (the last ``test_fraction``
of rows is test, as in the CAFE paper), build the vocabulary on the train rows only, and write the
final train/test parts with contiguous ids beside the raw ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from cafe_dist.data.schema import (
    BAD_ROWS_FILE,
    SPLITS,
    VOCAB_FILE,
    DatasetMeta,
    idx_column,
)
from cafe_dist.errors import BadInputError
from cafe_dist.progress import row_bar

ROWS_PER_PART = 1 << 20
READ_BATCH = 1 << 18


class _CountMerger:
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


def vocab_table(sparse: list[str], values: dict[str, tuple[np.ndarray, np.ndarray]]) -> pa.Table:
    """``vocab.parquet``'s rows (feature index, value, count) from each feature's sorted values + counts."""
    return pa.table({
        "feature": np.concatenate([np.full(len(values[f][0]), j, np.int16) for j, f in enumerate(sparse)]),
        "value": np.concatenate([values[f][0] for f in sparse]),
        "count": np.concatenate([values[f][1] for f in sparse]),
    })


def contiguous_ids(vocab_values: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Position + 1 of each raw value in the sorted vocabulary; 0 for values not in it."""
    if len(vocab_values) == 0:
        return np.zeros(len(raw), np.int64)
    pos = np.searchsorted(vocab_values, raw)
    hit = (pos < len(vocab_values)) & (vocab_values[np.minimum(pos, len(vocab_values) - 1)] == raw)
    return np.where(hit, pos + 1, 0).astype(np.int64)


class RawSink:
    """Pass 1's output: good rows appended to one raw Parquet file in source order, rejected lines
    (source, line number, reason, raw text) to a TSV file. Memory stays one batch."""

    def __init__(self, raw_path: Path, bad_path: Path, schema: pa.Schema, n_dense: int, n_sparse: int,
                 extra_names: list[str] | None = None, bad_header: bool = True) -> None:
        self.schema, self.n_dense, self.n_sparse = schema, n_dense, n_sparse
        self.extra_names = extra_names or []
        self.raw = pq.ParquetWriter(raw_path, schema)
        self.bad_file = open(bad_path, "w")  # noqa: SIM115 (closed in close)
        if bad_header:
            self.bad_file.write("source\tline\treason\traw\n")
        self.good = self.bad = 0
        self.first_bad: list[str] = []  # a few rejected lines, for a message when every line is bad

    def add_rows(self, label: np.ndarray, dense: np.ndarray, sparse: np.ndarray,
                 extra: dict[str, np.ndarray] | None = None) -> None:
        """Append good rows: label (n,), dense (n, n_dense) float32, sparse (n, n_sparse) int64."""
        if len(label) == 0:
            return
        cols = [pa.array(label.astype(np.int8))]
        cols += [pa.array(dense[:, j].astype(np.float32)) for j in range(self.n_dense)]
        cols += [pa.array(sparse[:, j].astype(np.int64)) for j in range(self.n_sparse)]
        cols += [pa.array(extra[name]) for name in self.extra_names] if extra else []
        self.raw.write_table(pa.Table.from_arrays(cols, schema=self.schema))
        self.good += len(label)

    def add_bad(self, source: str, lines: list[int | None], reasons: list[str], raws: list[str]) -> None:
        for line, reason, raw in zip(lines, reasons, raws):
            raw = raw.replace("\t", "\\t").replace("\n", "\\n")
            self.bad_file.write(f"{source}\t{'' if line is None else line}\t{reason}\t{raw[:500]}\n")
            if len(self.first_bad) < 3:
                self.first_bad.append(f"{source} line {line}: {reason}")
        self.bad += len(lines)

    def close(self) -> None:
        self.raw.close()
        self.bad_file.close()


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
        min_count: int = 1,
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
        self.min_count = min_count
        self.sources = sources or []
        self.extra_meta = extra_meta or {}
        self.progress = progress
        self.extra_names = list((extra_columns or {}).keys())
        self.raw_schema = raw_schema(self.dense, self.sparse, extra_columns)
        self._raw_path = self.out / "_raw.parquet"
        self.sink = RawSink(self._raw_path, self.out / BAD_ROWS_FILE, self.raw_schema, len(self.dense),
                            len(self.sparse), self.extra_names)
        self.add_rows, self.add_bad = self.sink.add_rows, self.sink.add_bad

    @property
    def good(self) -> int:
        return self.sink.good

    @property
    def bad(self) -> int:
        return self.sink.bad

    # ---- pass 2 -------------------------------------------------------------------------------
    def _raw_batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        yield from pq.ParquetFile(self._raw_path).iter_batches(batch_size=READ_BATCH, columns=columns)

    def _bar(self, total: int, desc: str) -> tqdm:
        return row_bar(desc, total, enabled=self.progress)

    def finalize(self) -> DatasetMeta:
        self.sink.close()
        if self.good == 0:
            self._raw_path.unlink(missing_ok=True)
            detail = (f"all {self.bad:,} lines were malformed, e.g. " + "; ".join(self.sink.first_bad)
                      if self.bad else "the input holds no rows")
            raise BadInputError(f"no usable rows: {detail}. Check that the input is in {self.fmt} format.")
        n_test = int(round(self.good * self.test_fraction))
        n_train = self.good - n_test
        check_split(self.good, n_train, self.test_fraction)
        vocab = self._build_vocab(n_train)
        self._write_splits(n_train, vocab)
        self._raw_path.unlink()
        meta = DatasetMeta(
            format=self.fmt,
            dense_features=self.dense,
            sparse_features=self.sparse,
            cardinality={f: int(len(v)) + 1 for f, (v, _) in vocab.items()},
            raw_distinct={f: int(self._distinct[f]) for f in self.sparse},
            rows={"train": n_train, "test": n_test},
            bad_rows=self.bad,
            labeled=self.labeled,
            sources=self.sources,
            extra=self.extra_meta,
        )
        meta.save(self.out)
        return meta

    def _build_vocab(self, n_train: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        mergers = {f: _CountMerger() for f in self.sparse}
        seen = 0
        with self._bar(n_train, "vocabulary") as bar:
            for batch in self._raw_batches(self.sparse):
                take = min(batch.num_rows, n_train - seen)
                if take <= 0:
                    break
                for f in self.sparse:
                    mergers[f].add(batch.column(f).to_numpy()[:take])
                seen += take
                bar.update(take)
        vocab, self._distinct = {}, {}
        for f in self.sparse:
            values, counts = mergers[f].result()
            self._distinct[f] = len(values)
            keep = counts >= self.min_count
            vocab[f] = (values[keep], counts[keep])
        pq.write_table(vocab_table(self.sparse, vocab), self.out / VOCAB_FILE)
        return vocab

    def _write_splits(self, n_train: int, vocab: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        idx_fields = [pa.field(idx_column(f), pa.int64()) for f in self.sparse]
        schema = pa.schema(list(self.raw_schema) + idx_fields)
        parts = {s: _PartWriter(self.out / s, schema) for s in SPLITS}
        row = 0
        with self._bar(self.good, "write parquet") as bar:
            for batch in self._raw_batches():
                n = batch.num_rows
                cols = list(batch.columns)
                for f in self.sparse:
                    cols.append(pa.array(contiguous_ids(vocab[f][0], batch.column(f).to_numpy())))
                table = pa.Table.from_arrays(cols, schema=schema)
                cut = min(max(n_train - row, 0), n)
                if cut:
                    parts["train"].write(table.slice(0, cut))
                if cut < n:
                    parts["test"].write(table.slice(cut))
                row += n
                bar.update(n)
        for p in parts.values():
            p.close()


class _PartWriter:
    """Writes ``part-00000.parquet``, ``part-00001.parquet``, ... of about ROWS_PER_PART rows each."""

    def __init__(self, directory: Path, schema: pa.Schema) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.index = 0
        self.rows_in_part = 0
        self.writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.dir / f"part-{self.index:05d}.parquet", self.schema)
        self.writer.write_table(table)
        self.rows_in_part += table.num_rows
        if self.rows_in_part >= ROWS_PER_PART:
            self.writer.close()
            self.writer, self.rows_in_part = None, 0
            self.index += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        elif self.index == 0:  # an empty split still gets a readable, schema-carrying part
            pq.write_table(self.schema.empty_table(), self.dir / "part-00000.parquet")
