"""``cafe-dist bench throughput``: training samples/s of every method in one run of the bench, each
as a ratio to ``full`` (TorchRec EBC with the fbgemm kernels) and to ``hash`` measured in the same
run, plus where a step's time goes (data, lookup, dense forward, backward with the optimizers, and
the method's between-steps work: for CAFE sketch, sync and migration).

Rates are steady-state (``steady_samples_per_sec``: the first warm-up steps, with the JIT compiles,
are left out), rank 0's clock, through the normal Ray Train + DMP path.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cafe_dist.bench.runs import prepare_data, train_once
from cafe_dist.embeddings.registry import REGISTRY
from cafe_dist.outputs import write_text
from cafe_dist.result import RunResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThroughputSpec:
    methods: tuple[str, ...] = tuple(REGISTRY)
    num_workers: tuple[int, ...] = (1, 2)
    ratio: float = 100.0
    steps: int = 120
    batch_size: int = 1024
    data: str | None = None  # None: synthetic Criteo-shaped data generated once in data/synth_throughput
    synthetic_rows: int = 300_000
    storage_path: str = "runs/bench"
    extra: tuple[str, ...] = field(default_factory=tuple)
    # rounds of every method, in turn: a shared 2-core VM's speed drifts by 10-20 % between runs
    # seconds apart, so a ratio is taken within each round and the median round reported
    repeats: int = 1


def machine() -> dict[str, Any]:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def synthetic_dataset(spec: ThroughputSpec) -> str:
    """The bench's own Criteo-shaped dataset (generated once, in data/synth_throughput): its path."""
    from cafe_dist.data.synth import SynthSpec, generate_synthetic

    out = Path("data", "synth_throughput").resolve()
    if not (out / "meta.json").is_file():
        generate_synthetic(out, SynthSpec(rows=spec.synthetic_rows, seed=0, cardinality_scale=0.002), progress=False)
    return str(out)


def _record(out: RunResult) -> dict[str, Any]:
    split = out.stats.get("time_split_s") or {}
    total = sum(split.values()) or 1.0
    return {"samples_per_sec": out.stats.get("steady_samples_per_sec") or out.samples_per_sec,
            "samples_per_sec_with_warmup": out.samples_per_sec, "compression_ratio": out.compression_ratio,
            "steps": out.steps, "time_split": {k: v / total for k, v in split.items()}, "time_split_s": split}


def pool_rounds(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """One record per method from ``rounds`` (each: method → record of one run): the run with the
    median samples/s, its ``vs_full``/``vs_hash`` the median of the ratios taken within each round
    (paired: the runs of a round are minutes apart), every round's figures beside it."""
    pooled: dict[str, dict[str, Any]] = {}
    for method in rounds[0]:
        runs = [r[method] for r in rounds]
        ok = [rec for rec in runs if "samples_per_sec" in rec]
        if len(ok) < len(runs):
            pooled[method] = next(rec for rec in runs if "error" in rec)
            continue
        ok.sort(key=lambda rec: rec["samples_per_sec"])
        pooled[method] = {**ok[(len(ok) - 1) // 2], "samples_per_sec_runs": [r[method]["samples_per_sec"] for r in rounds]}
        for ref in ("full", "hash"):  # ratios to the baselines of the same round
            ratios = [r[method]["samples_per_sec"] / r[ref]["samples_per_sec"] for r in rounds
                      if "samples_per_sec" in r.get(ref, {})]
            if len(ratios) == len(rounds):
                pooled[method][f"vs_{ref}"] = statistics.median(ratios)
                if len(rounds) > 1:
                    pooled[method][f"vs_{ref}_runs"] = ratios
    return pooled


def run_throughput_bench(spec: ThroughputSpec, output_json: str | Path | None = None) -> dict[str, Any]:
    data_dir = prepare_data(spec.data, spec.storage_path) if spec.data else synthetic_dataset(spec)
    common = (f"train.batch_size={spec.batch_size}", f"train.max_steps={spec.steps}", "train.log_every=50",
              *spec.extra)
    by_workers: dict[str, dict[str, Any]] = {}
    for w in spec.num_workers:
        rounds = []
        for rep in range(spec.repeats):
            res: dict[str, Any] = {}
            for method in spec.methods:
                ratio = 1.0 if method == "full" else spec.ratio
                log.info("bench throughput: %d worker(s): %s at %gx (round %d of %d)", w, method, ratio, rep + 1,
                         spec.repeats)
                out = train_once(data_dir, method, ratio, w, spec.storage_path, common)
                res[method] = {"error": out} if isinstance(out, str) else _record(out)
            rounds.append(res)
        by_workers[str(w)] = pool_rounds(rounds)
    first = str(spec.num_workers[0])
    methods = {m: {**by_workers[first][m], "by_workers": {w: by_workers[w][m] for w in by_workers}}
               for m in spec.methods}
    result = {"machine": machine(), "spec": asdict(spec), "data_dir": data_dir, "methods": methods,
              "num_workers": list(spec.num_workers)}
    if len(spec.num_workers) > 1:  # scaling: samples/s at the most workers over the fewest
        lo, hi = str(min(spec.num_workers)), str(max(spec.num_workers))
        result["scaling"] = {m: by_workers[hi][m]["samples_per_sec"] / by_workers[lo][m]["samples_per_sec"]
                             for m in spec.methods
                             if "samples_per_sec" in by_workers[hi][m] and "samples_per_sec" in by_workers[lo][m]}
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        write_text(output_json, json.dumps(result, indent=2) + "\n")
    return result
