"""Streaming reader for delimited click-log text (plain or compressed), bad lines recorded not fatal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from cafe_dist.errors import BadInputError
from cafe_dist.progress import row_bar

BLOCK_SIZE = 8 << 20


@dataclass
class TextBatch:
    """One parsed block: string columns plus the physical line number of every row."""

    table: pa.Table
    lines: np.ndarray  # int64, 1-based line numbers in the source file
    wrong_width: list[tuple[int | None, str, str]] = field(default_factory=list)  # (line, reason, raw)


def _open_raw(path: str) -> tuple[pa.NativeFile, int | None, str | None]:
    """The file as stored (compressed or not), its size, and the codec its name says it uses."""
    if "://" in path:
        fs, p = pa.fs.FileSystem.from_uri(path)
        info = fs.get_file_info(p)
        if info.type == pa.fs.FileType.Directory:
            raise BadInputError(f"input {path} is a directory; give the files in it")
        raw, size = fs.open_input_stream(p), info.size
    else:
        local = Path(path)
        if local.is_dir():
            raise BadInputError(f"input {path} is a directory; give the files in it (e.g. {path}/*.gz)")
        if not local.is_file():
            raise BadInputError(f"input file not found: {path}")
        raw, size = pa.OSFile(path), local.stat().st_size
    try:
        codec = pa.Codec.detect(path).name
    except (ValueError, TypeError):
        codec = None
    return raw, size, codec


def open_stream(path: str | Path) -> pa.NativeFile:
    """Open a local or remote file, decompressing by extension (.gz, .bz2, .zst, ...)."""
    raw, _, codec = _open_raw(str(path))
    return pa.CompressedInputStream(raw, codec) if codec else raw


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
    quote: bool = False,
) -> Iterator[TextBatch]:
    """Yield string-typed blocks; lines with the wrong field count are reported, not raised."""
    pending: list[tuple[int | None, str, str]] = []
    expected = len(column_names)

    def on_invalid(row: pacsv.InvalidRow) -> str:
        pending.append((row.number, f"expected {expected} fields, got {row.actual_columns}", row.text or ""))
        return "skip"

    raw, size, codec = _open_raw(str(path))
    last_line, last_byte = 0, 0  # how far the reading got: the last good line, bytes of the file read

    def unreadable(e: Exception) -> BadInputError:
        where = f"byte {last_byte:,} of {size:,}" if size is not None else f"byte {last_byte:,}"
        return BadInputError(
            f"{path}: cannot read past line {last_line:,} ({where}{' of the compressed file' if codec else ''}): "
            f"{e}. The file is truncated or corrupt" + (f" (check it with `{codec} -t`)" if codec == "gzip" else "")
            + "; nothing was converted. Download or copy it again.")

    try:
        reader = pacsv.open_csv(
            pa.CompressedInputStream(raw, codec) if codec else raw,
            read_options=pacsv.ReadOptions(
                column_names=column_names, skip_rows=1 if skip_header else 0,
                block_size=BLOCK_SIZE, use_threads=False,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, quote_char='"' if quote else False, ignore_empty_lines=False,
                invalid_row_handler=on_invalid,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in column_names},
                strings_can_be_null=False, quoted_strings_can_be_null=False,
            ),
        )
    except (OSError, pa.ArrowException) as e:
        raise unreadable(e) from None
    # Line of the i-th good row = i + first_line + (number of skipped lines before it).
    skipped: list[int] = []
    offset = 2 if skip_header else 1
    good_so_far = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except (OSError, pa.ArrowException) as e:
            raise unreadable(e) from None
        invalid, pending[:] = list(pending), []
        skipped.extend(line for line, _, _ in invalid if line is not None)
        n = batch.num_rows
        idx = np.arange(good_so_far, good_so_far + n)
        s = np.asarray(skipped, dtype=np.int64) - offset
        # skipped line number b_j has (b_j - offset - j) good rows before it
        before = s - np.arange(len(s))
        lines = idx + offset + np.searchsorted(before, idx, side="right")
        good_so_far += n
        last_line = int(lines[-1]) if n else last_line
        last_byte = raw.tell()
        yield TextBatch(pa.Table.from_batches([batch]), lines, invalid)
    if pending:
        yield TextBatch(pa.table({c: pa.array([], pa.string()) for c in column_names}),
                        np.zeros(0, np.int64), list(pending))


def bad_row_text(table: pa.Table, rows: np.ndarray, delimiter: str) -> list[str]:
    """Rebuild the raw text of a few rejected rows (only bad rows, so a Python join is fine)."""
    cols = [table.column(i).take(pa.array(rows)).to_pylist() for i in range(table.num_columns)]
    return [delimiter.join(vals) for vals in zip(*cols)]


def parse_into(path: str | Path, names: list[str], delimiter: str, sink, convert: Callable[[TextBatch], None],
               progress: bool = False, skip_header: bool = False, quote: bool = False) -> None:
    """Stream one file into ``sink``: lines of the wrong width go to ``sink.add_bad``, every other
    block through ``convert`` (which validates it and adds its good rows to the sink)."""
    bar = row_bar(f"parse {Path(path).name}", enabled=progress)
    for tb in read_delimited(path, names, delimiter, skip_header=skip_header, quote=quote):
        if tb.wrong_width:
            sink.add_bad(str(path), *map(list, zip(*tb.wrong_width)))
        if tb.table.num_rows:
            convert(tb)
        bar.update(tb.table.num_rows + len(tb.wrong_width))
    bar.close()
