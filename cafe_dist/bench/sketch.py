"""``cafe-dist bench sketch``: HotSketch insert throughput and hot-set quality on a Zipf stream.

The default stream matches the one the reference C++ HotSketch (SIGMOD artifact) was measured on:
ids ``(zipf(1.1) - 1) % 10M`` shuffled through a fixed random permutation of the id space, 20 M
ids, 100,000 hot slots, promotion threshold 50, frequency scores, batches of 4096. Our sketch only
scores (the coordinator's merger hands out slots), so its hot set here is what that merge picks at
one worker: the ``hot_slots`` strongest ids scoring at least the threshold.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from cafe_dist.embeddings.cafe.sketch import HotSketch

# The reference HotSketch (HugoZHL/CAFE, C++ through ctypes, single thread) on this default stream,
# as measured on these machines (issue 8); set beside ours in every report.
REFERENCE = {"impl": "HugoZHL/CAFE HotSketch (C++, ctypes)", "insert_mids_per_s": 45.0, "recall": 1.00,
             "precision": 0.81, "bytes": 4_800_000}


@dataclass(frozen=True)
class SketchBenchSpec:
    num_ids: int = 20_000_000
    distinct: int = 10_000_000
    zipf_a: float = 1.1
    hot_slots: int = 100_000
    threshold: float = 50.0
    batch: int = 4096
    buckets: int = 100_000  # 100,000 x 4 cells x 12 B + pin bits = 4.85 MB, about the reference's 4.8 MB
    recall_k: int = 10_000
    precision_k: int = 100_000
    seed: int = 0
    path: str = "numba"  # or "tensor"
    device: str = "cpu"  # the tensor path runs where its tensors are (cuda: the GPU check)


def zipf_stream(spec: SketchBenchSpec) -> np.ndarray:
    rng = np.random.default_rng(spec.seed)
    perm = rng.permutation(spec.distinct)
    return perm[(rng.zipf(spec.zipf_a, size=spec.num_ids) - 1) % spec.distinct]


def run_sketch_bench(spec: SketchBenchSpec) -> dict:
    ids = zipf_stream(spec)
    values, counts = np.unique(ids, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    top_recall = values[order[: spec.recall_k]]
    top_precision = values[order[: spec.precision_k]]

    numba = spec.path == "numba"
    if numba and spec.device != "cpu":
        raise ValueError("the numba path runs on the CPU; use path='tensor' on a GPU")
    stream = torch.from_numpy(ids).to(spec.device)
    HotSketch(spec.buckets, device=spec.device, use_numba=numba).insert(stream[:16])  # compile outside the timing
    sketch = HotSketch(spec.buckets, device=spec.device, use_numba=numba)
    sync = torch.cuda.synchronize if stream.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for i in range(0, spec.num_ids, spec.batch):
        sketch.insert(stream[i:i + spec.batch])
    sync()
    seconds = time.perf_counter() - start
    top = sketch.top(spec.hot_slots)
    hot = top[sketch.scores(top) >= spec.threshold].cpu().numpy()
    ours = {
        "insert_mids_per_s": spec.num_ids / seconds / 1e6,
        "recall": float(np.isin(top_recall, hot).mean()),
        "precision": float(np.isin(hot, top_precision).mean()) if hot.size else 0.0,
        "bytes": sketch.memory_bytes(),
    }
    default = spec == SketchBenchSpec(path=spec.path, device=spec.device)  # the reference was measured on the default stream only
    return {
        **ours,
        **({"reference": REFERENCE, "vs_reference": {k: ours[k] / REFERENCE[k] for k in ours}} if default else {}),
        "hot_ids": int(hot.size),
        "seconds": seconds,
        "spec": asdict(spec),
        "machine": (torch.cuda.get_device_name(stream.device) if stream.is_cuda else
                    f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"),
    }
