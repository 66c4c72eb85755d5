"""``cafe-dist bench input``: rows/s per worker through the trainer's own input path, beside what
pyarrow reads on one core in the same run.

For each batch size, the same Ray Train workers a run starts read their own rows of the train
split (:class:`~cafe_dist.train.row_order.Deal`, :class:`~cafe_dist.data.reader.RowReader`),
check and collate them and copy them to the device (:class:`~cafe_dist.train.feed.Feed`: a
background thread; pinned memory on a GPU), the loop taking each batch as a step would. Each worker
reports its rows/s, the CPU time its process spent (so rows per core-second: what ``plan`` turns
into cores per GPU), the bytes it read against its share of the split, and the time to its first
batch fresh and resumed at 90 % of the rows (a seek, not a re-read).

References, in the driver, on one core (pinned; Arrow at one thread): pyarrow reading the same
columns of the same rows (the storage's limit), the same plus the :class:`Collator` in one thread
(the work without the overlap), and optionally (``--ray-data``) Ray Data's ``iter_batches`` with
the Collator, the path a worker took before.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from cafe_dist.batching import Collator
from cafe_dist.bench.cpu import one_core
from cafe_dist.data import storage
from cafe_dist.data.reader import RowReader, SplitFiles
from cafe_dist.data.schema import DatasetMeta
from cafe_dist.rates import H200_SAMPLES_PER_S

log = logging.getLogger("cafe_dist.bench")



def _pyarrow_rate(split: SplitFiles, columns: list[str], rows: int, batch: int, collate: Collator | None) -> float:
    """Rows/s reading the first ``rows`` rows' row groups (and collating batches of ``batch``), warm:
    the first pass is not timed."""
    _pyarrow_pass(split, columns, rows, batch, collate)
    return _pyarrow_pass(split, columns, rows, batch, collate)


def _pyarrow_pass(split: SplitFiles, columns: list[str], rows: int, batch: int, collate: Collator | None) -> float:
    groups = split.groups_of(0, rows)
    t0, n = time.perf_counter(), 0
    files: dict[int, pq.ParquetFile] = {}
    for g in groups:
        fi = int(split.group_file[g])
        if fi not in files:
            files[fi] = pq.ParquetFile(split.files[fi])
        table = files[fi].read_row_group(int(split.group_index[g]), columns=columns)
        cols = {c: table.column(c).to_numpy() for c in columns}
        n += table.num_rows
        if collate is not None:
            for lo in range(0, table.num_rows, batch):
                collate({c: v[lo:lo + batch] for c, v in cols.items()})
    return n / (time.perf_counter() - t0)


def _ray_data_rate(data_dir: str, columns: list[str], rows: int, batch: int, collate: Collator) -> float:
    import ray.data

    ds = ray.data.read_parquet(storage.join(data_dir, "train"), columns=columns).limit(rows)
    t0, n = time.perf_counter(), 0
    for np_batch in ds.iter_batches(batch_size=batch, batch_format="numpy", prefetch_batches=2):
        collate(np_batch)
        n += len(np_batch["label"])
    return n / (time.perf_counter() - t0)


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: the trainer's input path for every batch size, its figures to a file."""
    import ray.train
    import torch

    from cafe_dist.train.feed import Feed
    from cafe_dist.train.row_order import Deal

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device("cuda", ctx.get_local_rank()) if config["use_gpu"] else torch.device("cpu")
    meta, split, rows = config["meta"], config["split"], config["rows"]
    collate = Collator(meta)
    out = {}
    for bs in config["batch_sizes"]:
        deal = Deal.epoch(rows, world, bs, split.row_group_rows)
        plan = [deal.rows_of(rank, k) for k in range(deal.steps())]
        passes = []
        for _ in range(2):  # the first pass is cold (allocator, page cache): a long run's steady state is the second
            reader = RowReader(split, collate.columns)
            cpu0, t0 = time.process_time(), time.perf_counter()
            first = None
            with Feed(reader, collate, device, plan, digests=config["digests"]) as feed:
                for _fed in feed:  # what a step takes
                    if first is None:
                        first = time.perf_counter() - t0
                    if device.type == "cuda":
                        torch.cuda.current_stream().synchronize()
            passes.append((time.perf_counter() - t0, time.process_time() - cpu0, first, reader.bytes_read))
        (cold, *_), (wall, cpu, first, read) = passes
        trained = deal.steps() * bs
        # time to the first batch resumed 90 % into the rows: the same deal, its position a step count
        at = int(deal.steps() * 0.9)
        t1 = time.perf_counter()
        with Feed(RowReader(split, collate.columns), collate, device, plan[at:at + 1], digests=False) as feed:
            next(iter(feed))
        resumed_first = time.perf_counter() - t1
        out[str(bs)] = {"rows": trained, "wall_s": wall, "cpu_s": cpu, "rows_per_s": trained / wall,
                        "cold_rows_per_s": trained / cold,
                        "rows_per_cpu_s": trained / cpu, "cores": cpu / wall, "bytes_read": read,
                        "first_batch_s": first, "resumed_first_batch_s": resumed_first, "resumed_at_step": at,
                        "steps": deal.steps()}
    storage.write_bytes(storage.join(config["out_dir"], f"rank{rank}.json"), json.dumps(out).encode())


def _split_bytes(split: SplitFiles, columns: list[str], rows: int) -> int:
    """Compressed bytes of ``columns`` in the row groups holding the first ``rows`` rows."""
    total, names = 0, set(columns)
    metas: dict[int, Any] = {}
    for g in split.groups_of(0, rows):
        fi = int(split.group_file[g])
        if fi not in metas:
            with storage.open_input_file(split.files[fi]) as f:
                metas[fi] = pq.read_metadata(f)
        rg = metas[fi].row_group(int(split.group_index[g]))
        total += sum(rg.column(c).total_compressed_size for c in range(rg.num_columns)
                     if rg.column(c).path_in_schema in names)
    return total


def run_input_bench(data: str, batch_sizes: list[int], *, num_workers: int = 1, rows: int | None = None,
                    repeats: int = 3, ray_data: bool = False, use_gpu: bool = False, digests: bool = True,
                    storage_path: str = "runs/bench", output_json: str | Path | None = None) -> dict[str, Any]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cafe_dist.bench.throughput import machine
    from cafe_dist.config import JobConfig
    from cafe_dist.data.validate import check_parquet_schema
    from cafe_dist.train.launcher import _init_ray

    data_dir = storage.resolve(data)
    meta = DatasetMeta.load(data_dir)
    split = check_parquet_schema(data_dir, meta)["train"]
    rows = min(rows or split.rows, split.rows)
    collate = Collator(meta)
    columns = collate.columns
    refs: dict[int, dict[str, list[float]]] = {bs: {"pyarrow": [], "collate": [], "ray_data": []} for bs in batch_sizes}
    job = JobConfig.model_validate({"data": {"path": data_dir}, "ray": {"num_workers": num_workers, "use_gpu": use_gpu}})
    _init_ray(job)
    workers: list[dict[str, Any]] = []
    for rep in range(repeats):
        with one_core():
            for bs in batch_sizes:
                refs[bs]["pyarrow"].append(_pyarrow_rate(split, columns, rows, bs, None))
                refs[bs]["collate"].append(_pyarrow_rate(split, columns, rows, bs, collate))
                if ray_data:
                    refs[bs]["ray_data"].append(_ray_data_rate(data_dir, columns, rows, bs, collate))
        out_dir = storage.join(storage.resolve(storage_path), "bench-input", uuid.uuid4().hex[:8])
        TorchTrainer(_worker_loop, train_loop_config={"meta": meta, "split": split, "rows": rows,
                                                      "batch_sizes": batch_sizes, "use_gpu": use_gpu, "digests": digests,
                                                      "out_dir": out_dir},
                     scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
                     run_config=RunConfig(name=f"bench-input-{uuid.uuid4().hex[:6]}",
                                          storage_path=storage.resolve(storage_path))).fit()
        workers.append({r: json.loads(storage.read_text(storage.join(out_dir, f"rank{r}.json")))
                        for r in range(num_workers)})
        log.info("bench input: round %d of %d done", rep + 1, repeats)
    share = _split_bytes(split, columns, rows) / num_workers
    records = []
    for bs in batch_sizes:
        per_round = [[w[r][str(bs)] for r in range(num_workers)] for w in workers]
        rate = statistics.median(statistics.mean(x["rows_per_s"] for x in rnd) for rnd in per_round)
        per_core = statistics.median(statistics.mean(x["rows_per_cpu_s"] for x in rnd) for rnd in per_round)
        pa_rate = statistics.median(refs[bs]["pyarrow"])
        last = per_round[-1]
        rec = {"batch_size": bs, "num_workers": num_workers, "rows_per_s": rate,
               "cold_rows_per_s": statistics.median(x["cold_rows_per_s"] for rnd in per_round for x in rnd),
               "pyarrow_rows_per_s": pa_rate, "ratio": rate / pa_rate,
               "pyarrow_collate_rows_per_s": statistics.median(refs[bs]["collate"]),
               "rows_per_cpu_s": per_core,
               "cores": statistics.median(x["cores"] for rnd in per_round for x in rnd),  # CPU s per wall s
               "cores_per_h200": H200_SAMPLES_PER_S / per_core,
               "bytes_read_over_share": [x["bytes_read"] / share for x in last],
               "first_batch_s": statistics.median(x["first_batch_s"] for rnd in per_round for x in rnd),
               "resumed_first_batch_s": statistics.median(x["resumed_first_batch_s"] for rnd in per_round
                                                          for x in rnd),
               "runs": {"rows_per_s": [[x["rows_per_s"] for x in rnd] for rnd in per_round],
                        "pyarrow_rows_per_s": refs[bs]["pyarrow"]}}
        if ray_data:
            rec["ray_data_collate_rows_per_s"] = statistics.median(refs[bs]["ray_data"])
        rec["resumed_over_fresh_first_batch"] = rec["resumed_first_batch_s"] / rec["first_batch_s"]
        records.append(rec)
    result = {"machine": machine(), "data_dir": data_dir, "rows": rows, "columns": len(columns),
              "row_group_rows": split.row_group_rows, "device": "cuda" if use_gpu else "cpu",
              "cores": os.cpu_count(), "h200_samples_per_s": H200_SAMPLES_PER_S, "repeats": repeats,
              "records": records}
    if output_json:
        from cafe_dist.outputs import write_text

        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        write_text(output_json, json.dumps(result, indent=2) + "\n")
    return result
