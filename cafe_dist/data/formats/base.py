"""What a click-log format is to cafe-dist: one class that knows its column layout, parses a block
of its text (for conversion and, the same code, for a served request), and shows a raw value.

Conversion (:meth:`ClickLogFormat.convert`) is the same for every format: stream each input's
blocks (:mod:`cafe_dist.data.textsource`), let the format turn a block's string columns into
labels, dense values and 32-bit raw categorical values with a validity mask per check, record the
rows that fail a check in ``bad_rows.tsv`` (line and reason) and write the rest through
:class:`~cafe_dist.data.writer.DatasetWriter`. The format and its options go into ``meta.json``,
so ``evaluate``/``predict`` of raw rows, the served model and ``hot`` read any dataset's rows the
way its conversion did (:func:`cafe_dist.data.formats.format_of`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

from cafe_dist.data.schema import MISSING_ID, DatasetMeta
from cafe_dist.data.target import staged_dataset
from cafe_dist.data.textsource import bad_row_text, parse_into
from cafe_dist.data.writer import DatasetWriter
from cafe_dist.errors import BadInputError


@dataclass
class Block:
    """One parsed block: every row's values, and per check the column it read and which rows pass."""

    label: np.ndarray  # (n,) int8; -1 when unlabeled
    dense: np.ndarray  # (n, dense features) float32, after log(1 + x)
    sparse: np.ndarray  # (n, categorical features) int64 raw values, MISSING_ID for missing
    checks: list[tuple[str, str, np.ndarray]] = field(default_factory=list)  # (column, reason, ok mask)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # extra Parquet columns (Avazu's hour)

    def bad(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows failing a check, index of the first check each fails)."""
        if not self.checks:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        ok = np.stack([c[2] for c in self.checks], axis=1)
        rows = np.flatnonzero(~ok.all(axis=1))
        return rows, np.argmax(~ok[rows], axis=1)


@dataclass(frozen=True)
class Layout:
    """One input file as the format reads it: its column names, whether it is labeled, and whether
    its first line is a header."""

    columns: list[str]
    labeled: bool
    header: bool = False


class ClickLogFormat(ABC):
    """A click-log format. Subclasses set ``name``, ``delimiter`` (``quote``), the features, and
    implement :meth:`layout`, :meth:`parse_block` and :meth:`show`."""

    name: ClassVar[str]
    delimiter: ClassVar[str] = "\t"
    quote: ClassVar[bool] = False  # whether "..." quotes a field (CSV)

    @property
    @abstractmethod
    def dense_features(self) -> list[str]: ...

    @property
    @abstractmethod
    def sparse_features(self) -> list[str]: ...

    @abstractmethod
    def layout(self, path: str) -> Layout:
        """How ``path`` is laid out (read from its first line); :class:`BadInputError` if it is not
        this format."""

    @abstractmethod
    def parse_block(self, table: pa.Table, labeled: bool) -> Block:
        """String columns of ``table`` (named as :meth:`layout` says) → values and checks, vectorised."""

    def show(self, value: int) -> str:
        """A raw categorical value as a person reads it (``hot``)."""
        return "(missing)" if value == MISSING_ID else str(value)

    def options(self) -> dict[str, Any]:
        """What rebuilds this format from ``meta.json`` (:meth:`from_options`); none by default."""
        return {}

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ClickLogFormat:
        return cls()

    extra_columns: ClassVar[dict[str, pa.DataType]] = {}

    # ---- conversion ---------------------------------------------------------------------------
    def layouts(self, inputs: list[str]) -> dict[str, Layout]:
        """Each input's layout; all must agree on being labeled."""
        if not inputs:
            raise BadInputError("no input files given")
        layouts = {str(p): self.layout(str(p)) for p in inputs}
        if len({lay.labeled for lay in layouts.values()}) > 1:
            raise BadInputError(f"mixing labeled and unlabeled {self.name} files: "
                                + ", ".join(f"{p} ({'labeled' if lay.labeled else 'unlabeled'})"
                                            for p, lay in layouts.items()))
        return layouts

    def parse_file(self, path: str, layout: Layout, sink, progress: bool = False) -> None:
        """Stream one file into ``sink`` (``add_rows`` / ``add_bad``: a writer or a PartSink)."""
        parse_into(path, layout.columns, self.delimiter, sink,
                   lambda tb: self._deliver(tb, layout, sink, path), progress, skip_header=layout.header,
                   quote=self.quote)

    def _deliver(self, tb, layout: Layout, sink, source: str) -> None:
        block = self.parse_block(tb.table, layout.labeled)
        rows, first = block.bad()
        if len(rows):
            raws = bad_row_text(tb.table, rows, self.delimiter)
            reasons = [f"{block.checks[k][1]}: {tb.table.column(block.checks[k][0])[int(r)].as_py()!r}"
                       if raw.strip(self.delimiter) else "empty line" for r, k, raw in zip(rows, first, raws)]
            sink.add_bad(source, tb.lines[rows].tolist(), reasons, raws)
        good = np.ones(len(block.label), bool)
        good[rows] = False
        sink.add_rows(block.label[good], block.dense[good], block.sparse[good],
                      **({"extra": {k: v[good] for k, v in block.extra.items()}} if block.extra else {}))

    def convert(self, inputs: list[str], out_dir: str | Path, *, test_fraction: float = 1 / 7,
                progress: bool = True, overwrite: bool = False) -> DatasetMeta:
        """Convert ``inputs`` into ``out_dir``, which is touched only once the new dataset is
        complete (:mod:`cafe_dist.data.target`); replacing a dataset there needs ``overwrite``."""
        layouts = self.layouts([str(p) for p in inputs])
        labeled, options = next(iter(layouts.values())).labeled, self.options()  # (libsvm's: read from the first line)
        with staged_dataset(out_dir, overwrite) as stage:
            writer = DatasetWriter(stage, self.name, self.dense_features, self.sparse_features,
                                   test_fraction=test_fraction, labeled=labeled,
                                   sources=list(layouts), extra_columns=dict(self.extra_columns) or None,
                                   extra_meta={"format_options": options} if options else None,
                                   progress=progress)
            for path, layout in layouts.items():
                self.parse_file(path, layout, writer, progress)
            return writer.finalize()

    # ---- serving ------------------------------------------------------------------------------
    def request_columns(self) -> list[str]:
        """The raw fields a served request sends, one column each."""
        return [*self.dense_features, *self.sparse_features]

    def numeric_columns(self) -> set[str]:
        """Request fields that take numbers (the rest take strings)."""
        return set(self.dense_features)

    def example(self) -> dict[str, Any]:
        """One valid request row (the logged model's input example)."""
        numeric = self.numeric_columns()
        return {c: 1.0 if c in numeric else "1" for c in self.request_columns()}

    def request_table(self, frame: pd.DataFrame) -> pa.Table:
        """A request's fields as the string columns :meth:`parse_block` reads (unlabeled)."""
        numeric = self.numeric_columns()
        return pa.table({c: _request_text(frame[c], c, c in numeric) for c in self.request_columns()})

    def request_arrays(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """A served request (one row per click, the raw fields as columns) → (dense, raw (F, B)),
        through the same :meth:`parse_block` as conversion; the first bad value is refused with its
        column and row (:class:`BadInputError`): a request has no malformed line to skip."""
        columns = self.request_columns()
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise BadInputError(f"the input lacks column(s) {', '.join(missing)}; send the raw {self.name} fields "
                                f"{', '.join(columns[:3])}, ..., {columns[-1]} (null for a missing value)")
        if len(frame) == 0:
            raise BadInputError("the input holds no rows; send at least one")
        table = self.request_table(frame)
        block = self.parse_block(table, labeled=False)
        rows, first = block.bad()
        if len(rows):
            col, why, _ = block.checks[first[0]]
            raise BadInputError(f"column {col}, row {int(rows[0])}: {why}: {table.column(col)[int(rows[0])].as_py()!r}")
        return block.dense, block.sparse.T.copy()


def _shown(value: Any) -> str:
    """A request's value as the user sent it (``inf``, ``'abc'``), not as numpy prints it."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _request_text(col: pd.Series, name: str, numeric: bool) -> pa.Array:
    """One request column as the text a log line would hold ("" for null), type-checked first: a
    number field takes finite numbers, a text field strings (the number 12345 for a hex field is
    refused rather than guessed at)."""
    given = col.notna().to_numpy()
    if numeric:
        values = pd.to_numeric(col, errors="coerce").astype(np.float64).to_numpy(np.float64, na_value=np.nan)
        bad = given & ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise BadInputError(f"column {name}, row {row}: {_shown(col.iloc[row])} is not a finite number; this "
                                "field takes numbers (null when missing)")
        whole = np.isfinite(values) & (np.mod(np.nan_to_num(values), 1) == 0)
        text = np.where(whole, np.nan_to_num(values).astype(np.int64).astype(str), values.astype(str))
        return pa.array(np.where(given, text, ""), pa.string())
    if pd.api.types.infer_dtype(col, skipna=True) not in ("string", "empty"):
        row = int(np.flatnonzero(~col.map(lambda v: v is None or isinstance(v, str) or v != v).to_numpy(bool))[0])
        value = col.iloc[row]  # (the loop above runs on the error path only)
        kind = "number" if isinstance(value, (int, float, np.number)) else type(value).__name__
        raise BadInputError(f"column {name}, row {row}: {_shown(value)} is a {kind}, not a string; this field takes "
                            "the log's text (null or \"\" when missing)")
    return pa.array(col.astype("string").fillna("").to_numpy(dtype=object), pa.string())
