"""Driver side of ``cafe-dist train``: data on first use, Ray start-up, TorchTrainer, results."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from cafe_dist.checkpoint import find_latest, resize_message
from cafe_dist.config import ConfigError, JobConfig
from cafe_dist.data import storage
from cafe_dist.data.schema import SPLITS, DatasetMeta, idx_column
from cafe_dist.embeddings import input_kind
from cafe_dist.tracking import RunTracker, resolve_uri, run_tags


def ensure_data(job: JobConfig) -> DatasetMeta:
    """Load ``data.path``; generate it from ``data.synthetic`` when absent."""
    path = job.data.path
    if not storage.is_file(storage.join(path, "meta.json")):
        if job.data.synthetic is None or storage.is_uri(path):
            raise FileNotFoundError(
                f"data.path {path} holds no converted dataset (no meta.json). Convert data with "
                "`cafe-dist data criteo|avazu --out DIR`, or add a data.synthetic section to generate "
                "synthetic data there on first use."
            )
        from cafe_dist.data.synth import SynthSpec, generate_synthetic

        s = job.data.synthetic
        print(f"[cafe-dist] {path} not found: generating {s.rows:,} synthetic rows (seed {s.seed})",
              file=sys.stderr)
        spec = SynthSpec(rows=s.rows, seed=s.seed, cardinality_scale=s.cardinality_scale, zipf_a=s.zipf_a,
                         drift_period=s.drift_period, drift_fraction=s.drift_fraction)
        generate_synthetic(path, spec, test_fraction=s.test_fraction)
    meta = DatasetMeta.load(path)
    if not meta.labeled:
        raise ValueError(f"{path} was converted from unlabeled files; training needs labels")
    if meta.rows["train"] == 0:
        raise ValueError(f"{path} has an empty train split")
    return meta


def _init_ray(job: JobConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = job.ray.address or os.environ.get("RAY_ADDRESS")  # a Ray job's driver gets RAY_ADDRESS
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # A local cluster: logical CPUs for every worker plus headroom for Ray Data's read tasks, so
    # small machines do not deadlock with all CPUs held by training workers.
    need = int(job.ray.num_workers * job.ray.cpus_per_worker) + 2
    ray.init(num_cpus=max(os.cpu_count() or 1, need), log_to_driver=True)


def preflight(job: JobConfig, meta: DatasetMeta) -> None:
    """What can be checked on the driver is checked before any worker starts: the Parquet schema,
    whether the compression ratio can be met (tables sized on the meta device: no memory)."""
    import torch

    from cafe_dist.data.validate import check_parquet_schema
    from cafe_dist.embeddings import FeatureSpec, build_embedding

    check_parquet_schema(job.data.path, meta, input_kind(job.embedding.method))
    features = [FeatureSpec(f, meta.cardinality[f]) for f in meta.sparse_features]
    try:
        build_embedding(job.embedding.method, features, job.embedding.dim, job.embedding.compression_ratio,
                        device=torch.device("meta"), options=job.method_options())
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_resources(job: JobConfig) -> None:
    """Fail with a message, not a hang, when the cluster cannot hold the workers Ray Train asks for."""
    import ray

    have = ray.cluster_resources()
    need_cpu = job.ray.num_workers * job.ray.cpus_per_worker
    if have.get("CPU", 0) < need_cpu:
        raise ConfigError(
            f"ray.num_workers={job.ray.num_workers} needs {need_cpu:g} CPUs (ray.cpus_per_worker="
            f"{job.ray.cpus_per_worker:g} each) but the Ray cluster has {have.get('CPU', 0):g}; lower "
            "ray.num_workers or ray.cpus_per_worker, or add nodes")
    if job.ray.use_gpu and have.get("GPU", 0) < job.ray.num_workers:
        raise ConfigError(
            f"ray.use_gpu=true with ray.num_workers={job.ray.num_workers} needs {job.ray.num_workers} GPUs but "
            f"the Ray cluster has {have.get('GPU', 0):g}; lower ray.num_workers, add GPU nodes, or set "
            "ray.use_gpu=false")


def run_training(job: JobConfig, output_json: str | Path | None = None) -> dict[str, Any]:
    meta = ensure_data(job)
    preflight(job, meta)
    import ray
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cafe_dist.train.worker import train_loop_per_worker

    _init_ray(job)
    check_resources(job)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True  # click logs are time-ordered: train in that order
    kind = input_kind(job.embedding.method)
    columns = ["label", *meta.dense_features,
               *[idx_column(f) if kind == "idx" else f for f in meta.sparse_features]]
    data_dir = storage.resolve(job.data.path)  # absolute local path, or the URI as given
    datasets = {s: ray.data.read_parquet(storage.join(data_dir, s), columns=columns) for s in SPLITS}
    # an unnamed run gets a fresh name (a named one resumes its newest checkpoint)
    name = job.ray.name or f"cafe-{job.embedding.method}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    storage_path = storage.resolve(job.ray.storage_path)
    run_dir = storage.join(storage_path, name)
    found = find_latest(run_dir)  # a re-run of a checkpointed name resumes (workers pick the same one)
    if found is not None:
        if found.world_size != job.ray.num_workers:
            raise ConfigError(resize_message(found, job.ray.num_workers))
        print(f"[cafe-dist] {name}: resuming from {found.path} (step {found.step})", file=sys.stderr)
    coordinator = None
    if job.embedding.method in ("cafe", "cafe_ml"):  # one named hot-set coordinator per run, crash-safe
        from cafe_dist.coordinator import start_coordinator

        coordinator = start_coordinator(name, state_dir=storage.join(run_dir, "coordinator"))
    tracker = None
    if job.mlflow.enabled:  # the driver opens the run; rank 0 logs into it; nobody else does
        tracker = RunTracker(resolve_uri(job.mlflow.tracking_uri), job.mlflow.experiment)
        previous = found.info.get("mlflow_run_id") if found is not None else None
        if not (previous and tracker.resume(previous)):
            tags = {**run_tags(job.embedding.method, job.embedding.compression_ratio, job.ray.num_workers),
                    **job.mlflow.run_tags, **({"resumed_from_run": previous} if previous else {})}
            tracker.start(name, job.flat(), tags,
                          yaml.safe_dump(job.model_dump(), sort_keys=False))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job.model_dump(), "meta": asdict(meta), "data_dir": str(data_dir),
                           "coordinator": name if coordinator is not None else None,
                           "run_dir": run_dir, "fit_id": uuid.uuid4().hex[:12],
                           "mlflow": {"uri": tracker.uri, "run_id": tracker.run_id} if tracker else None},
        scaling_config=ScalingConfig(num_workers=job.ray.num_workers, use_gpu=job.ray.use_gpu,
                                     resources_per_worker={"CPU": job.ray.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if job.ray.use_gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=job.ray.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=job.checkpoint.keep)),
        datasets=datasets,
    )
    t0 = time.perf_counter()
    try:
        try:
            result = trainer.fit()
        finally:
            if coordinator is not None:
                ray.kill(coordinator)
        if result.error:
            raise result.error
    except BaseException as e:
        if tracker:
            tracker.fail(e)
        raise
    wall = time.perf_counter() - t0
    m = result.metrics or {}
    if "embedding_bytes" not in m:
        raise RuntimeError(f"training finished without a final report (metrics: {m})")
    out = {
        "auc": m.get("auc"),
        "logloss": m.get("logloss"),
        "samples_per_sec": m.get("samples_per_sec"),
        "steps": m.get("steps"),
        "world_size": m.get("world_size"),
        "method": job.embedding.method,
        "compression_ratio": m["full_embedding_bytes"] / m["embedding_bytes"],
        "requested_compression_ratio": job.embedding.compression_ratio,
        "embedding_bytes": m.get("embedding_bytes"),
        "full_embedding_bytes": m.get("full_embedding_bytes"),
        "train_samples": m.get("train_samples"),
        "eval_rows": m.get("eval_rows"),
        "wall_time_s": wall,
        "data_path": str(data_dir),
        "checkpoint_path": result.checkpoint.path if result.checkpoint else None,
    }
    out.update({k: v for k, v in m.items() if k not in out})  # method stats (promotions, ...)
    if tracker:
        out["mlflow_run_id"] = tracker.run_id
        tracker.finish(out)
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(output_json).write_text(json.dumps(out, indent=2) + "\n")
    return out
