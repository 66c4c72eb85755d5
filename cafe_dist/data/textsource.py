"""Streaming reader for delimited click-log text (plain or compressed), bad lines recorded not fatal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from tqdm import tqdm

from cafe_dist.data.writer import BadInputError

BLOCK_SIZE = 8 << 20


@dataclass
class TextBatch:
    """One parsed block: string columns plus the physical line number of every row."""

    table: pa.Table
    lines: np.ndarray  # int64, 1-based line numbers in the source file
    wrong_width: list[tuple[int | None, str, str]] = field(default_factory=list)  # (line, reason, raw)


def open_stream(path: str | Path) -> pa.NativeFile:
    """Open a local or remote file, decompressing by extension (.gz, .bz2, .zst, ...)."""
    path = str(path)
    if "://" in path:
        fs, p = pa.fs.FileSystem.from_uri(path)
        raw = fs.open_input_stream(p)
        codec = pa.Codec.detect(p) if hasattr(pa.Codec, "detect") else None
        return pa.CompressedInputStream(raw, codec.name) if codec else raw
    if not Path(path).is_file():
        raise BadInputError(f"input file not found: {path}")
    return pa.input_stream(path, compression="detect")


def first_line(path: str | Path) -> str:
    with open_stream(path) as s:
        head = s.read(1 << 16)
    return head.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")


def read_delimited(
    path: str | Path,
    column_names: list[str],
    delimiter: str,
    *,
    skip_header: bool = False,
) -> Iterator[TextBatch]:
    """Yield string-typed blocks; lines with the wrong field count are reported, not raised."""
    pending: list[tuple[int | None, str, str]] = []
    expected = len(column_names)

    def on_invalid(row: pacsv.InvalidRow) -> str:
        pending.append((row.number, f"expected {expected} fields, got {row.actual_columns}", row.text or ""))
        return "skip"

    reader = pacsv.open_csv(
        open_stream(path),
        read_options=pacsv.ReadOptions(
            column_names=column_names, skip_rows=1 if skip_header else 0,
            block_size=BLOCK_SIZE, use_threads=False,
        ),
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter, quote_char=False, ignore_empty_lines=False,
            invalid_row_handler=on_invalid,
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in column_names},
            strings_can_be_null=False, quoted_strings_can_be_null=False,
        ),
    )
    # Line of the i-th good row = i + first_line + (number of skipped lines before it).
    skipped: list[int] = []
    offset = 2 if skip_header else 1
    good_so_far = 0
    for batch in reader:
        invalid, pending[:] = list(pending), []
        skipped.extend(line for line, _, _ in invalid if line is not None)
        n = batch.num_rows
        idx = np.arange(good_so_far, good_so_far + n)
        s = np.asarray(skipped, dtype=np.int64) - offset
        # skipped line number b_j has (b_j - offset - j) good rows before it
        before = s - np.arange(len(s))
        lines = idx + offset + np.searchsorted(before, idx, side="right")
        good_so_far += n
        yield TextBatch(pa.Table.from_batches([batch]), lines, invalid)
    if pending:
        yield TextBatch(pa.table({c: pa.array([], pa.string()) for c in column_names}),
                        np.zeros(0, np.int64), list(pending))


def bad_row_text(table: pa.Table, rows: np.ndarray, delimiter: str) -> list[str]:
    """Rebuild the raw text of a few rejected rows (only bad rows, so a Python join is fine)."""
    cols = [table.column(i).take(pa.array(rows)).to_pylist() for i in range(table.num_columns)]
    return [delimiter.join(vals) for vals in zip(*cols)]


def parse_into(path: str | Path, names: list[str], delimiter: str, sink, convert: Callable[[TextBatch], None],
               progress: bool = False, skip_header: bool = False) -> None:
    """Stream one file into ``sink``: lines of the wrong width go to ``sink.add_bad``, every other
    block through ``convert`` (which validates it and adds its good rows to the sink)."""
    bar = tqdm(desc=f"parse {Path(path).name}", unit="row", unit_scale=True, file=sys.stderr,
               disable=not progress, mininterval=1.0)
    for tb in read_delimited(path, names, delimiter, skip_header=skip_header):
        if tb.wrong_width:
            sink.add_bad(str(path), *map(list, zip(*tb.wrong_width)))
        if tb.table.num_rows:
            convert(tb)
        bar.update(tb.table.num_rows + len(tb.wrong_width))
    bar.close()
