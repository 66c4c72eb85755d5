"""Criteo / CriteoTB conversion as a distributed Ray Data job (``cafe-dist data criteo --address``).

Same output as the single-machine converter (:mod:`cafe_dist.data.formats.criteo`): the same parsing and
bad-line records, the last ``test_fraction`` of rows (in input order) as the test split, the same
distinct counts and list of small features' values. One map-only stage: a task per input file
parses it into Parquet parts of ``ROWS_PER_PART`` rows and returns the file's distinct counters (a
few KiB a feature: :mod:`cafe_dist.data.distinct`). The driver then merges the counters of the
files wholly in the train split, counts the train parts of the one file the split cuts (reading
their categorical columns, our own output), and renames parts into ``train/`` and ``test/``
(:func:`cafe_dist.data.writer.finish_dataset`, the single-machine converter's own ending): no ids
are shuffled or aggregated anywhere.

``out_dir`` must be a path every node can write (a shared file system): tasks write their parts
there directly.
"""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cafe_dist.data.distinct import FeatureCounters
from cafe_dist.data.formats.criteo import labeled_layout, parse_file
from cafe_dist.data.schema import BAD_ROWS_FILE, CRITEO_DENSE, CRITEO_SPARSE, DatasetMeta
from cafe_dist.data.target import staged_dataset
from cafe_dist.data.writer import PARTS_DIR, Part, PartSink, finish_dataset, raw_schema
from cafe_dist.errors import BadInputError

log = logging.getLogger(__name__)


def _parse(batch: dict[str, np.ndarray], out: str, labeled: bool) -> dict[str, np.ndarray]:
    """The one stage: parse each input file of the batch into its parts, with their counters."""
    rows, bad, parts = [], [], []
    for index, path in zip(batch["index"], batch["path"]):
        sink = PartSink(Path(out, PARTS_DIR), Path(out, "_bad", f"part-{index:05d}.tsv"),
                        raw_schema(CRITEO_DENSE, CRITEO_SPARSE), CRITEO_DENSE, CRITEO_SPARSE, bad_header=False,
                        prefix=f"f{index:05d}")
        parse_file(str(path), labeled, sink)
        done = sink.close()
        counters = FeatureCounters(CRITEO_SPARSE)
        for p in done:
            counters.merge(p.counters)
        rows.append(sink.good)
        bad.append(sink.bad)
        parts.append(pickle.dumps(([(str(p.path), p.rows) for p in done], counters)))
    return {"index": batch["index"], "rows": np.array(rows, np.int64), "bad": np.array(bad, np.int64),
            "parts": np.array(parts + [None], dtype=object)[:-1]}


def convert_criteo_distributed(inputs: list[str], out_dir: str | Path, *, test_fraction: float = 1 / 7,
                               address: str | None = None, overwrite: bool = False) -> DatasetMeta:
    """``out_dir`` is replaced only by a complete dataset (staged beside it; :mod:`cafe_dist.data.target`)."""
    if not 0.0 <= test_fraction < 1.0:
        raise BadInputError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    labeled = labeled_layout(inputs)
    with staged_dataset(Path(out_dir).resolve(), overwrite) as stage:
        return _convert(inputs, stage, labeled, test_fraction, address)


def _convert(inputs: list[str], out: Path, labeled: bool, test_fraction: float, address: str | None) -> DatasetMeta:
    import ray
    import ray.data

    for sub in (PARTS_DIR, "_bad"):
        (out / sub).mkdir(parents=True)
    if not ray.is_initialized():
        ray.init(address=address if address not in (None, "local") else None)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True

    log.info("parse %d file(s) on %g CPUs", len(inputs), ray.cluster_resources().get("CPU", 0))
    items: list[dict[str, Any]] = [{"index": i, "path": str(p)} for i, p in enumerate(inputs)]
    parsed = ray.data.from_items(items, override_num_blocks=max(len(items), 1)).map_batches(
        _parse, batch_size=1, fn_kwargs={"out": str(out), "labeled": labeled}).take_all()
    parsed.sort(key=lambda r: r["index"])
    good, bad = sum(int(r["rows"]) for r in parsed), sum(int(r["bad"]) for r in parsed)
    with open(out / BAD_ROWS_FILE, "w") as f:
        f.write("source\tline\treason\traw\n")
        for i in range(len(inputs)):
            with open(out / "_bad" / f"part-{i:05d}.tsv") as part:
                shutil.copyfileobj(part, f)
    shutil.rmtree(out / "_bad")
    if good == 0:
        first = (out / BAD_ROWS_FILE).read_text().splitlines()[1:4]  # the staging dir goes with this error
        raise BadInputError(f"no usable rows: all {bad:,} lines were malformed, e.g. "
                            + "; ".join(" ".join(r.split("\t")[:3]) for r in first)
                            + ". Check that the input is in criteo format.")
    n_train = good - int(round(good * test_fraction))
    train, parts, offset = FeatureCounters(CRITEO_SPARSE), [], 0
    for r in parsed:  # a file wholly in the train split brings its counters; the cut one is counted again
        file_parts, counters = pickle.loads(r["parts"])
        whole = offset + int(r["rows"]) <= n_train
        if whole:
            train.merge(counters)
        parts += [Part(Path(path), rows, None, merged=whole) for path, rows in file_parts]
        offset += int(r["rows"])
    schema = raw_schema(CRITEO_DENSE, CRITEO_SPARSE)
    meta = finish_dataset(out, parts, train, fmt="criteo", dense=CRITEO_DENSE,
                          sparse=CRITEO_SPARSE, schema=schema, good=good, bad=bad, test_fraction=test_fraction,
                          labeled=labeled, sources=[str(p) for p in inputs], extra={"converted_by": "ray-data"})
    (out / PARTS_DIR).rmdir()
    return meta
