"""``cafe-dist bench conversion``: what converting a click log costs, beside the floor of reading it.

On one core (the process pinned to one CPU, Arrow's pools at one thread), in the same run and
alternating, the bench times pyarrow's CSV reader parsing the file (streaming, default type
inference: what reading the text costs at least) and ``cafe-dist data <format>`` converting it (the
same reader with every field as a string, then the format's parsing and checks, the distinct
counters and the Parquet parts). The ratio is the conversion's rows/s over pyarrow's.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv

from cafe_dist.bench.cpu import one_core
from cafe_dist.data.formats import FORMATS

log = logging.getLogger("cafe_dist.bench")


def _pyarrow_rows(path: str, delimiter: str) -> int:
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(autogenerate_column_names=True, use_threads=False),
                            parse_options=pacsv.ParseOptions(delimiter=delimiter))
    return sum(batch.num_rows for batch in reader)


def run_conversion_bench(inputs: list[str], fmt: str = "criteo", repeats: int = 3) -> dict[str, Any]:
    if fmt not in FORMATS or fmt == "csv":
        raise ValueError(f"--format: one of {', '.join(f for f in FORMATS if f != 'csv')}")
    plugin = FORMATS[fmt]()
    work = Path(tempfile.mkdtemp(prefix="cafe-bench-conversion-"))
    arrow_s, convert_s, rows = [], [], 0
    try:
        with one_core() as cpu:
            for i in range(repeats):
                t0 = time.perf_counter()
                rows = sum(_pyarrow_rows(p, plugin.delimiter) for p in inputs)
                arrow_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                meta = plugin.convert(inputs, work / f"out{i}", progress=False)
                convert_s.append(time.perf_counter() - t0)
                shutil.rmtree(work / f"out{i}")
                log.info("round %d: pyarrow %.2f s, conversion %.2f s", i + 1, arrow_s[-1], convert_s[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    good = meta.rows["train"] + meta.rows["test"]
    a, c = statistics.median(arrow_s), statistics.median(convert_s)
    return {"inputs": inputs, "format": fmt, "bytes": sum(Path(p).stat().st_size for p in inputs),
            "rows": rows, "good_rows": good, "repeats": repeats, "cpu": cpu,
            "pyarrow_s": arrow_s, "conversion_s": convert_s,
            "pyarrow_rows_per_s": rows / a, "conversion_rows_per_s": good / c,
            "conversion_over_pyarrow": (good / c) / (rows / a),
            "distinct_counted": sorted(set(meta.distinct_counted.values()))}
