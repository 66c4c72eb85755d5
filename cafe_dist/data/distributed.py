"""Criteo / CriteoTB conversion as a distributed Ray Data job (``cafe-dist data criteo --address``).

Same output as the single-machine converter (:mod:`cafe_dist.data.formats.criteo`): the same parsing and
bad-line records, the last ``test_fraction`` of rows (in input order) as the test split, the
vocabulary counted on the train rows only, the same contiguous ids. Three stages, each a Ray Data
pipeline over small work items, so the cluster's CPUs share the work and no stage holds the data
in one process:

1. parse: one task per input file → ``_raw/part-NNNNN.parquet`` + ``_bad/part-NNNNN.tsv``;
2. count: one task per raw part (train rows only) → per-block (feature, value, count), summed by a
   distributed ``groupby``; the driver keeps the vocabulary (sorted values per feature) and puts it
   in the object store once;
3. write: one task per slice of a raw part that falls in one split → ``train|test/part-NNNNN.parquet``
   with the ``<feature>_idx`` columns added.

``out_dir`` must be a path every node can write (a shared file system): tasks write their parts
there directly.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cafe_dist.data.formats.criteo import labeled_layout, parse_file
from cafe_dist.data.schema import (
    BAD_ROWS_FILE,
    CRITEO_DENSE,
    CRITEO_SPARSE,
    SPLITS,
    VOCAB_FILE,
    DatasetMeta,
    idx_column,
)
from cafe_dist.data.target import staged_dataset
from cafe_dist.data.writer import RawSink, check_split, contiguous_ids, raw_schema, vocab_table
from cafe_dist.errors import BadInputError

log = logging.getLogger(__name__)


def _parse(batch: dict[str, np.ndarray], out: str, labeled: bool) -> dict[str, np.ndarray]:
    """Stage 1: parse each input file of the batch into its raw part."""
    rows, bad = [], []
    for index, path in zip(batch["index"], batch["path"]):
        sink = RawSink(Path(out, "_raw", f"part-{index:05d}.parquet"), Path(out, "_bad", f"part-{index:05d}.tsv"),
                       raw_schema(CRITEO_DENSE, CRITEO_SPARSE), len(CRITEO_DENSE), len(CRITEO_SPARSE),
                       bad_header=False)
        parse_file(str(path), labeled, sink)
        sink.close()
        rows.append(sink.good)
        bad.append(sink.bad)
    return {"index": batch["index"], "rows": np.array(rows, np.int64), "bad": np.array(bad, np.int64)}


def _count(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stage 2: (feature, value, count) of the train rows of each raw part slice."""
    feats, vals, cnts = [], [], []
    for path, start, stop in zip(batch["path"], batch["start"], batch["stop"]):
        table = pq.read_table(str(path), columns=CRITEO_SPARSE).slice(int(start), int(stop - start))
        for j, f in enumerate(CRITEO_SPARSE):
            u, c = np.unique(table.column(f).to_numpy(), return_counts=True)
            feats.append(np.full(len(u), j, np.int16))
            vals.append(u)
            cnts.append(c.astype(np.int64))
    if not feats:
        return {"feature": np.zeros(0, np.int16), "value": np.zeros(0, np.int64), "count": np.zeros(0, np.int64)}
    return {"feature": np.concatenate(feats), "value": np.concatenate(vals), "count": np.concatenate(cnts)}


class _Write:
    """Stage 3: add contiguous ids to a slice of a raw part and write it as one split part."""

    def __init__(self, vocab_ref: Any, out: str) -> None:
        import ray

        self.vocab: dict[str, np.ndarray] = ray.get(vocab_ref)
        self.out = out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for path, start, stop, split, part in zip(batch["path"], batch["start"], batch["stop"], batch["split"],
                                                  batch["part"]):
            table = pq.read_table(str(path)).slice(int(start), int(stop - start))
            for f in CRITEO_SPARSE:
                table = table.append_column(idx_column(f), pa.array(contiguous_ids(self.vocab[f],
                                                                                   table.column(f).to_numpy())))
            pq.write_table(table, Path(self.out, str(split), f"part-{int(part):05d}.parquet"))
        return {"part": batch["part"]}


def _slices(raw_rows: list[int], n_train: int) -> list[dict[str, Any]]:
    """Cut the raw parts (in input order) at row ``n_train``: (part, start, stop, split) items."""
    items, offset, parts = [], 0, dict.fromkeys(SPLITS, 0)
    for index, rows in enumerate(raw_rows):
        for split, lo, hi in (("train", 0, n_train), ("test", n_train, None)):
            start = max(lo - offset, 0)
            stop = rows if hi is None else min(hi - offset, rows)
            if stop > start:
                items.append({"index": index, "start": start, "stop": stop, "split": split, "part": parts[split]})
                parts[split] += 1
        offset += rows
    return items


def convert_criteo_distributed(inputs: list[str], out_dir: str | Path, *, test_fraction: float = 1 / 7,
                               min_count: int = 1, address: str | None = None,
                               overwrite: bool = False) -> DatasetMeta:
    """``out_dir`` is replaced only by a complete dataset (staged beside it; :mod:`cafe_dist.data.target`)."""
    if not 0.0 <= test_fraction < 1.0:
        raise BadInputError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    labeled = labeled_layout(inputs)
    with staged_dataset(Path(out_dir).resolve(), overwrite) as stage:
        return _convert(inputs, stage, labeled, test_fraction, min_count, address)


def _convert(inputs: list[str], out: Path, labeled: bool, test_fraction: float, min_count: int,
             address: str | None) -> DatasetMeta:
    import ray
    import ray.data

    for sub in (*SPLITS, "_raw", "_bad"):
        (out / sub).mkdir(parents=True)
    if not ray.is_initialized():
        ray.init(address=address if address not in (None, "local") else None)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True

    def stage(items: list[dict[str, Any]], fn, **kwargs) -> ray.data.Dataset:
        return ray.data.from_items(items, override_num_blocks=max(len(items), 1)).map_batches(
            fn, batch_size=1, **kwargs)

    log.info("parse %d file(s) on %g CPUs", len(inputs), ray.cluster_resources().get("CPU", 0))
    parsed = stage([{"index": i, "path": str(p)} for i, p in enumerate(inputs)], _parse,
                   fn_kwargs={"out": str(out), "labeled": labeled}).take_all()
    raw_rows = [int(r["rows"]) for r in sorted(parsed, key=lambda r: r["index"])]
    good, bad = sum(raw_rows), sum(int(r["bad"]) for r in parsed)
    with open(out / BAD_ROWS_FILE, "w") as f:
        f.write("source\tline\treason\traw\n")
        for i in range(len(inputs)):
            with open(out / "_bad" / f"part-{i:05d}.tsv") as part:
                shutil.copyfileobj(part, f)
    if good == 0:
        first = (out / BAD_ROWS_FILE).read_text().splitlines()[1:4]  # the staging dir goes with this error
        raise BadInputError(f"no usable rows: all {bad:,} lines were malformed, e.g. "
                            + "; ".join(" ".join(r.split("\t")[:3]) for r in first)
                            + ". Check that the input is in criteo format.")
    n_test = int(round(good * test_fraction))
    n_train = good - n_test
    check_split(good, n_train, test_fraction)
    items = _slices(raw_rows, n_train)
    for item in items:
        item["path"] = str(out / "_raw" / f"part-{item['index']:05d}.parquet")

    log.info("count values of %s train rows", f"{n_train:,}")
    train_items = [i for i in items if i["split"] == "train"]
    counts = stage(train_items, _count).groupby(["feature", "value"]).sum("count").to_pandas()
    counts = counts.sort_values(["feature", "value"])
    vocab, distinct = {}, {}
    for j, f in enumerate(CRITEO_SPARSE):
        sel = counts[counts["feature"] == j]
        values, n = sel["value"].to_numpy(np.int64), sel["sum(count)"].to_numpy(np.int64)
        distinct[f] = len(values)
        keep = n >= min_count
        vocab[f] = (values[keep], n[keep])
    pq.write_table(vocab_table(CRITEO_SPARSE, vocab), out / VOCAB_FILE)

    log.info("write %d part(s)", len(items))
    vocab_ref = ray.put({f: v for f, (v, _) in vocab.items()})
    stage(items, _Write, fn_constructor_args=(vocab_ref, str(out)),
          compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(len(items), 1))).take_all()
    schema = pq.read_schema(out / "_raw" / "part-00000.parquet")
    schema = pa.schema(list(schema) + [pa.field(idx_column(f), pa.int64()) for f in CRITEO_SPARSE])
    for split in SPLITS:  # an empty split still gets a readable, schema-carrying part
        if not any((out / split).iterdir()):
            pq.write_table(schema.empty_table(), out / split / "part-00000.parquet")
    shutil.rmtree(out / "_raw")
    shutil.rmtree(out / "_bad")
    meta = DatasetMeta(format="criteo", dense_features=CRITEO_DENSE, sparse_features=CRITEO_SPARSE,
                       cardinality={f: len(v) + 1 for f, (v, _) in vocab.items()}, raw_distinct=distinct,
                       rows={"train": n_train, "test": n_test}, bad_rows=bad, labeled=labeled,
                       sources=[str(p) for p in inputs], extra={"converted_by": "ray-data"})
    meta.save(out)
    return meta
