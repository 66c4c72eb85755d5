"""The GPU check (``scripts/gpu-check.sh`` runs it in the CUDA venv): one JSON of what the GPU path does.

On one GPU, under the 8 minutes a borrowed machine gives it:

1. ``train``: ``full``, ``hash`` and ``cafe`` (100x) each train one Ray worker on the GPU (row-wise
   sharding, NCCL) on the demo's synthetic data through TorchRec's train pipeline, and ``cafe`` once
   more in the plain loop: samples/s and AUC, and ``pipeline_speedup`` (cafe's steady samples/s
   pipelined over plain);
2. ``sketch``: the HotSketch tensor path on the GPU (the default 20 M-id Zipf stream): inserts/s,
   recall and precision;
3. ``quality``: the quality bench on the real 100k Criteo sample, ``full``, ``hash``, ``cafe`` at
   100x (skipped, and said so, when the sample is not there).

``--dry-run`` runs the same code on the CPU at toy sizes (20 steps on 20,000 synthetic rows, 1 M
sketch ids, 20,000 sample rows): what CI (``.ci/run``) can check of a script nobody can run here.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("cafe_dist.gpucheck")
SAMPLE = "criteo_kaggle_sample0.003_first100k_w261.tsv"
# (method, ratio, train.pipeline): the pipeline as GPU workers train, then CAFE in the plain loop
RUNS = (("full", 1.0, "auto"), ("hash", 100.0, "auto"), ("cafe", 100.0, "auto"), ("cafe", 100.0, "off"))


def _environment(device: str) -> dict[str, Any]:
    import fbgemm_gpu
    import torchrec

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "torchrec": torchrec.__version__,
           "fbgemm_gpu": getattr(fbgemm_gpu, "__version__", "?"), "cuda_available": torch.cuda.is_available(),
           "device": device, "machine": platform.node()}
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                   gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return env


# the dry run's training data: 20,000 demo rows, batch 256 (20 steps fit one epoch), so CI runs it in minutes
DRY_DATA = ("data.synthetic.rows=20000", "train.batch_size=256")


def _gpu_overrides(dry: bool) -> list[str]:
    if dry:
        return ["ray.use_gpu=false", "train.max_steps=20"]
    return ["ray.use_gpu=true", "ray.sharding_types=[row_wise,table_wise,data_parallel]", "ray.cpus_per_worker=4"]


def _train(out: Path, dry: bool) -> list[dict[str, Any]]:
    from cafe_dist.config import load_config
    from cafe_dist.train.launcher import run_training

    rows = []
    for method, ratio, pipeline in RUNS:
        pipeline = "on" if dry and pipeline == "auto" else pipeline  # the dry run's CPU: auto would not use it
        job = load_config("jobs/demo.yaml", [
            f"embedding.method={method}", f"embedding.compression_ratio={ratio}", "ray.num_workers=1",
            f"train.pipeline={pipeline}",
            f"ray.name=gpu-check-{method}-{pipeline}-{time.strftime('%H%M%S')}", f"ray.storage_path={(out / 'runs').resolve()}",
            f"data.path={(out / 'data' / 'synth_demo').resolve()}", "mlflow.enabled=false",
            *_gpu_overrides(dry), *(DRY_DATA if dry else ())])
        log.info("gpu-check train: %s at %gx (train.pipeline=%s)", method, ratio, pipeline)
        t0 = time.perf_counter()
        try:
            r = run_training(job)
            rows.append({"method": method, "ratio": ratio, "pipelined": r.stats.get("pipelined"),
                         "auc": r.auc, "logloss": r.logloss, "steps": r.steps,
                         "samples_per_sec": r.samples_per_sec,
                         "steady_samples_per_sec": r.stats.get("steady_samples_per_sec"),
                         "wall_s": time.perf_counter() - t0})
        except Exception as e:  # noqa: BLE001 (the check reports every part, whichever fails)
            log.exception("gpu-check train %s failed", method)
            rows.append({"method": method, "ratio": ratio, "pipeline": pipeline, "error": f"{type(e).__name__}: {e}"})
    return rows


def pipeline_speedup(rows: list[dict[str, Any]]) -> float | None:
    """CAFE's steady samples/s through the pipeline over the plain loop's (None: a run failed)."""
    cafe = {r.get("pipelined"): r.get("steady_samples_per_sec") for r in rows if r["method"] == "cafe"}
    return cafe[True] / cafe[False] if cafe.get(True) and cafe.get(False) else None


def _sketch(device: str, dry: bool) -> dict[str, Any]:
    from cafe_dist.bench.sketch import SketchBenchSpec, run_sketch_bench

    spec = SketchBenchSpec(path="tensor", device=device, **({"num_ids": 1_000_000} if dry else {}))
    log.info("gpu-check sketch: %s ids on %s", f"{spec.num_ids:,}", device)
    try:
        r = run_sketch_bench(spec)
        return {k: r[k] for k in ("insert_mids_per_s", "recall", "precision", "bytes", "seconds")} | {"device": device}
    except Exception as e:  # noqa: BLE001
        log.exception("gpu-check sketch failed")
        return {"error": f"{type(e).__name__}: {e}"}


def _quality(out: Path, data: Path | None, dry: bool) -> dict[str, Any]:
    from cafe_dist.bench.quality import QualitySpec, run_quality_bench

    if data is None or not data.is_file():
        return {"skipped": f"no sample at {data} (the real 100k Criteo sample, {SAMPLE}); pass --data"}
    log.info("gpu-check quality: full, hash, cafe at 100x on %s", data)
    try:
        r = run_quality_bench(QualitySpec(
            data=str(data), methods=("hash", "cafe"), ratios=(100,), storage_path=str((out / "bench").resolve()),
            rows=20_000 if dry else None, extra=("mlflow.enabled=false", *_gpu_overrides(dry))))
        return {"runs": r["runs"]}
    except Exception as e:  # noqa: BLE001
        log.exception("gpu-check quality failed")
        return {"error": f"{type(e).__name__}: {e}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu-check", description=__doc__)
    p.add_argument("--out", default="gpu-check-out", help="directory for the runs and gpu-check.json")
    p.add_argument("--data", help=f"the real 100k sample (default ../shared/data/{SAMPLE} if present)")
    p.add_argument("--dry-run", action="store_true", help="on the CPU at toy sizes")
    args = p.parse_args(argv)
    ours = logging.getLogger("cafe_dist")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[gpu-check] %(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        log.error("no CUDA device visible to torch %s: run on a GPU machine, or --dry-run", torch.__version__)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else Path("..", "shared", "data", SAMPLE)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "dry_run": args.dry_run,
                              "environment": _environment(device)}
    path = out / "gpu-check.json"
    for part, run in (("train", lambda: _train(out, args.dry_run)), ("sketch", lambda: _sketch(device, args.dry_run)),
                      ("quality", lambda: _quality(out, data, args.dry_run))):
        started = time.perf_counter()
        report[part] = run()
        report.setdefault("seconds", {})[part] = round(time.perf_counter() - started, 1)
        path.write_text(json.dumps(report, indent=1))  # what finished survives a timeout
    report["pipeline_speedup"] = pipeline_speedup(report["train"])
    report["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    path.write_text(json.dumps(report, indent=1))
    failed = [k for k in ("train", "sketch", "quality") if "error" in json.dumps(report[k])]
    log.info("wrote %s in %.0f s%s", path, report["seconds"]["total"],
             f"; failed: {', '.join(failed)}" if failed else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
