"""``cafe-dist bench cafe-step``: CAFE's own work per training step at GPU batch sizes, part by part.

On a dataset's features (CAFE at the given ratio, its hot map full: every hot slot holds a key of
the batch's values), for each batch size, on one core (torch at one thread) or on ``--device``:

- ``keys``: raw values → sketch keys (a hash per value);
- ``lookup``: the hot map's sorted keys searched for every key;
- ``scoring``: the importance of every occurrence (the L2 norm of its bag's gradient, normalised
  per field), what the backward hook and the flush compute;
- ``insert``: the HotSketch insert of the batch's keys and scores, numba (CPU) and tensor paths.

Each as ids/s beside what one H200 needs: 2.1 M samples/s x the compressed features' ids per
sample. The insert runs beside the next step (cafe_dist.embeddings.cafe.scoring), so it needs to
keep up with a step, not to fit inside one; the others are on the step's critical path.
"""

from __future__ import annotations

from typing import Any

import torch

from cafe_dist.bench.gpu_core import timed_rate
from cafe_dist.embeddings.cafe.scoring import occurrence_norms
from cafe_dist.rates import H200_SAMPLES_PER_S


def _one_batch(emb, v, dev: torch.device, repeats: int) -> dict[str, Any]:
    """The parts' times on one batch's values ``v``, the hot map filled from them."""
    from cafe_dist.embeddings.cafe.hotmap import HotMapUpdate
    from cafe_dist.embeddings.cafe.sketch import HotSketch

    compressed = (~emb.is_full.index_select(0, v.feature)).nonzero().squeeze(1)
    cv = v.take(compressed)
    keys = emb.keys_of(cv)
    unique = torch.unique(keys)
    hot = unique[torch.randperm(unique.numel(), device=dev)[: emb.hot_rows]]
    emb.hot_map.apply(HotMapUpdate(emb.hot_map.version + 1, promoted_keys=hot,
                                   promoted_slots=torch.arange(hot.numel(), device=dev)))
    grad = torch.randn(v.batch_size, len(emb.names), emb.dim, device=dev)
    scorer = emb.scorer

    def scoring() -> torch.Tensor:
        return scorer.normalised(cv.feature, occurrence_norms(grad, cv.segment))

    weights = scoring()
    n = keys.numel()

    def seconds(fn) -> float:
        return n / timed_rate(fn, n, dev, repeats)

    rec = {"batch_size": v.batch_size, "ids": n, "hot_keys": int(hot.numel()),
           "keys_s": seconds(lambda: emb.keys_of(cv)), "lookup_s": seconds(lambda: emb.hot_map.lookup(keys)),
           "scoring_s": seconds(scoring)}
    paths = ["numba", "tensor"] if dev.type == "cpu" else ["tensor"]
    for path in paths:
        sketch = HotSketch(scorer.sketch.w, device=dev, use_numba=path == "numba")
        rec[f"insert_{path}_s"] = seconds(lambda s=sketch: s.insert(keys, weights))
    need = H200_SAMPLES_PER_S * n / v.batch_size  # ids/s one H200's training rate brings
    rec["h200_ids_per_s"] = need
    for part in ("keys", "lookup", "scoring", *(f"insert_{p}" for p in paths)):
        rate = n / rec[f"{part}_s"]
        rec[f"{part}_ids_per_s"] = rate
        rec[f"{part}_over_h200"] = rate / need
    rec["critical_path_s"] = rec["keys_s"] + rec["lookup_s"] + rec["scoring_s"]  # the insert runs beside the next step
    return rec


def run_cafe_step_bench(data: str, batch_sizes: list[int], ratio: float = 100.0, device: str = "cpu",
                        repeats: int = 5) -> dict[str, Any]:
    from cafe_dist.batching import Collator
    from cafe_dist.bench.throughput import machine
    from cafe_dist.config import JobConfig
    from cafe_dist.data import storage
    from cafe_dist.data.reader import RowReader, SplitFiles
    from cafe_dist.data.schema import DatasetMeta
    from cafe_dist.model_spec import ModelSpec

    dev = torch.device(device)
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        data_dir = storage.resolve(data)
        meta = DatasetMeta.load(data_dir)
        job = JobConfig.model_validate({"data": {"path": data_dir},
                                        "embedding": {"method": "cafe", "compression_ratio": ratio}})
        values = storage.join(data_dir, "values.parquet")
        emb = ModelSpec.from_job(job, values=values if storage.is_file(values) else None).embedding(meta, dev)
        split = SplitFiles.scan(storage.join(data_dir, "train"))
        collate = Collator(meta)
        reader = RowReader(split, collate.columns)
        records = []
        for bs in batch_sizes:
            batch = collate(reader.read([(0, min(bs, split.rows))]))
            records.append(_one_batch(emb, emb.values_of(batch.sparse.to(dev)), dev, repeats))
        return {"machine": machine(), "device": device, "threads": torch.get_num_threads(), "ratio": ratio,
                "data_dir": data_dir, "hot_rows": emb.hot_rows, "sketch_buckets": emb.scorer.sketch.w,
                "records": records, "ids": "the compressed features' values of the batch"}
    finally:
        torch.set_num_threads(threads)
