"""``cafe-dist bench drift``: CAFE against hashing at the same memory on drifting synthetic data.

Trains each method on the same synthetic stream (the popular ids rotate every ``drift_period``
rows) through the normal Ray Train path, and reports test AUC / logloss plus, for CAFE, how the
fraction of the current top ids that are hot drops at each rotation and recovers after it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cafe_dist.config import load_config


@dataclass(frozen=True)
class DriftBenchSpec:
    rows: int = 1_000_000
    cardinality_scale: float = 0.01
    drift_period: int = 200_000
    drift_fraction: float = 0.05
    seed: int = 1
    ratio: float = 100.0
    methods: tuple[str, ...] = ("hash", "cafe")
    num_workers: int = 1
    batch_size: int = 1024
    data_dir: str = "data/synth_drift"
    storage_path: str = "runs"
    extra: tuple[str, ...] = field(default_factory=tuple)  # more --set overrides for every run


def recovery(trace: list[list[float]], period: int) -> list[dict[str, float]]:
    """Per drift period (by rows consumed): the lowest and the last hot fraction seen in it."""
    out: dict[int, dict[str, float]] = {}
    for _, rows, frac in trace:
        p = int(rows // period)
        seg = out.setdefault(p, {"period": p, "min": frac, "last": frac})
        seg["min"], seg["last"] = min(seg["min"], frac), frac
    return [out[k] for k in sorted(out)]


def run_drift_bench(spec: DriftBenchSpec) -> dict[str, Any]:
    from cafe_dist.train.launcher import run_training

    results: dict[str, Any] = {"spec": asdict(spec), "runs": {}}
    for method in spec.methods:
        job = load_config(None, [
            f"data.path={Path(spec.data_dir).resolve()}", f"data.synthetic.rows={spec.rows}",
            f"data.synthetic.seed={spec.seed}", f"data.synthetic.cardinality_scale={spec.cardinality_scale}",
            f"data.synthetic.drift_period={spec.drift_period}",
            f"data.synthetic.drift_fraction={spec.drift_fraction}",
            f"embedding.method={method}", f"embedding.compression_ratio={spec.ratio}",
            f"train.batch_size={spec.batch_size}", "train.log_every=25",
            f"ray.num_workers={spec.num_workers}", f"ray.storage_path={spec.storage_path}", *spec.extra])
        out = run_training(job).to_dict()
        run = {k: out.get(k) for k in ("auc", "logloss", "compression_ratio", "embedding_bytes",
                                       "samples_per_sec", "promoted_total", "demoted_total", "hot_ids")}
        if "hot_top_ids_trace" in out:
            run["hot_top_ids_trace"] = out["hot_top_ids_trace"]
            run["recovery"] = recovery(out["hot_top_ids_trace"], spec.drift_period)
        results["runs"][method] = run
    return results
