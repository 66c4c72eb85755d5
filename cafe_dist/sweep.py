"""``cafe-dist sweep``: every (method, compression ratio, seed) of a grid as a Ray Tune trial of the
Ray Train trainer, side by side on the cluster, then the comparison.

Each cell is one tracked training run (the same :func:`~cafe_dist.train.launcher.run_training` as
``cafe-dist train``), run by a Ray Tune trial that holds no resources of its own: its Ray Train
workers do, so Tune starts as many cells at once as ``--concurrency`` allows (default: as many as the
cluster's CPUs, or GPUs, hold). Every cell's MLflow run is a child of the sweep's parent run (tag
``mlflow.parentRunId``) and carries ``sweep=<name>``, so ``cafe-dist compare --tag sweep=<name>`` and
the MLflow UI show exactly that grid; the parent holds the table and the AUC-versus-ratio plot (mean
and standard deviation over the seeds, ``full`` as a reference line). A cell that fails is retried
by Tune per ``ray.max_failures``, then recorded (FAILED in MLflow, its error in the result) while the
rest go on; the exit status says whether all ran.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from cafe_dist.compare import FULL, collect_runs, format_table, plot_auc_vs_ratio, to_json
from cafe_dist.config import ConfigError, JobConfig
from cafe_dist.logs import quiet
from cafe_dist.mlflow_store import open_store, resolve_uri
from cafe_dist.outputs import write_text

log = logging.getLogger(__name__)


def grid(job: JobConfig, methods: list[str] | None, ratios: list[float] | None) -> tuple[list[str], list[float]]:
    """Methods and ratios from the command line, else from the job's ``sweep`` section."""
    methods = methods or (list(job.sweep.methods) if job.sweep else None)
    ratios = ratios or (list(job.sweep.ratios) if job.sweep else None)
    if not methods or not ratios:
        raise ConfigError("a sweep needs methods and ratios: pass --methods m1,m2 --ratios 10,100 or give "
                          "the job a sweep section (sweep.methods, sweep.ratios)")
    from cafe_dist.embeddings.registry import REGISTRY

    bad = [m for m in methods if m not in REGISTRY]
    if bad:
        raise ConfigError(f"--methods: unknown method(s) {', '.join(bad)}; choose from {', '.join(REGISTRY)}")
    if any(r < 1 for r in ratios):
        raise ConfigError(f"--ratios: every compression ratio must be ≥ 1 (got {ratios})")
    if not job.mlflow.enabled:
        raise ConfigError("a sweep is compared through MLflow: set mlflow.enabled=true")
    return methods, ratios


def cells_of(methods: list[str], ratios: list[float], seeds: list[int]) -> list[tuple[str, float, int]]:
    """(method, ratio, seed) of every cell: ``full``, the uncompressed reference, once per seed at
    ratio 1 whatever the ratios."""
    out = [(m, 1.0 if m == FULL else r, s) for m in methods for r in (ratios if m != FULL else [1.0]) for s in seeds]
    return list(dict.fromkeys(out))


def _cell(job: JobConfig, name: str, method: str, ratio: float, seed: int, several_seeds: bool,
          parent_run_id: str | None) -> JobConfig:
    from cafe_dist.data import storage

    raw = job.model_dump()
    # absolute: a Tune trial runs in a directory of its own
    raw["data"]["path"] = storage.resolve(raw["data"]["path"])
    raw["ray"]["storage_path"] = storage.resolve(raw["ray"]["storage_path"])
    raw["mlflow"]["tracking_uri"] = resolve_uri(raw["mlflow"]["tracking_uri"])
    raw["embedding"].update(method=method, compression_ratio=ratio)
    raw["train"]["seed"] = seed
    raw["ray"]["name"] = f"{name}-{method}-{ratio:g}x" + (f"-s{seed}" if several_seeds else "")
    raw["mlflow"]["run_tags"] = {**raw["mlflow"]["run_tags"], "sweep": name,
                                 **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    return JobConfig.model_validate(raw)


def _check_cells(name: str, cells: dict[tuple[str, float, int], JobConfig]) -> None:
    """Refuse the whole sweep, before anything runs, when a cell of an earlier sweep of this name was
    made with other settings (re-running it would report that old result as the new one)."""
    from cafe_dist.data.storage import join, resolve
    from cafe_dist.resume import decide
    from cafe_dist.train.launcher import ensure_data

    meta = ensure_data(next(iter(cells.values())))
    refused = []
    for (method, ratio, seed), cell in cells.items():
        try:
            decide(cell, meta, cell.ray.name, join(resolve(cell.ray.storage_path), cell.ray.name))
        except ConfigError as e:
            refused.append(f"{method} at {ratio:g}x (seed {seed}): {e}")
    if refused:
        raise ConfigError(f"sweep {name!r} already has runs made with other settings; nothing was run.\n"
                          + "\n".join(refused) + f"\nFor a sweep under the new settings pass another --name "
                          f"(not {name!r}), or --resume force to continue these runs anyway.")


def cluster_concurrency(job: JobConfig, n_cells: int) -> int:
    """How many cells the cluster holds at once: its CPUs (GPUs for GPU jobs) over one cell's workers'."""
    import ray

    have = ray.cluster_resources()
    fits = int(have.get("CPU", 0) // max(job.ray.num_workers * job.ray.cpus_per_worker, 1e-9))
    if job.ray.use_gpu:
        fits = min(fits, int(have.get("GPU", 0) // job.ray.num_workers))
    return max(1, min(fits, n_cells))


def _trial(config: dict[str, Any]) -> None:
    """One cell, in a Ray Tune trial: a whole ``cafe-dist train`` run; its result goes to Tune."""
    from ray import tune

    from cafe_dist.train.launcher import run_training

    out = run_training(JobConfig.model_validate(config["job"]))
    tune.report({"auc": out.auc, "logloss": out.logloss, "mlflow_run_id": out.mlflow_run_id or "",
                 "reused": out.already_finished, "steady_samples_per_sec": out.steady_samples_per_sec})


def _open_parent(job: JobConfig, name: str) -> tuple[MlflowClient, str]:
    """A client of the store and the sweep's parent MLflow run (tag ``sweep_parent=<name>``, not
    ``sweep``: it is no cell)."""
    from mlflow.entities import Param

    client, experiment_id = open_store(resolve_uri(job.mlflow.tracking_uri), job.mlflow.experiment)
    run = client.create_run(experiment_id, run_name=name, tags={"sweep_parent": name, **job.mlflow.run_tags})
    grid_params = job.sweep.model_dump() if job.sweep else {}
    client.log_batch(run.info.run_id, params=[Param(f"sweep.{k}", str(v)[:6000]) for k, v in grid_params.items()])
    return client, run.info.run_id


def _close_parent(client: MlflowClient, run_id: str, table_md: str, result: dict[str, Any], plot: Path,
                  failed: int) -> None:
    client.log_text(run_id, table_md + "\n", "table.md")
    client.log_text(run_id, json.dumps(result, indent=2) + "\n", "sweep.json")
    client.log_artifact(run_id, str(plot), "plots")
    client.set_terminated(run_id, "FINISHED" if not failed else "FAILED")


def run_sweep(job: JobConfig, methods: list[str] | None = None, ratios: list[float] | None = None,
              plot: str | Path | None = None, output_json: str | Path | None = None,
              seeds: list[int] | None = None, concurrency: int | None = None) -> dict[str, Any]:
    from ray import tune

    from cafe_dist.train.launcher import start_ray

    methods, ratios = grid(job, methods, ratios)
    seeds = seeds or (list(job.sweep.seeds) if job.sweep and job.sweep.seeds else [job.train.seed])
    name = (job.sweep.name if job.sweep and job.sweep.name else None) or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    keys = cells_of(methods, ratios, seeds)
    _check_cells(name, {k: _cell(job, name, *k, len(seeds) > 1, None) for k in keys})
    start_ray(job)  # one cell's workers must fit (checked with the numbers); the cells share the cluster
    concurrency = concurrency or (job.sweep.concurrency if job.sweep else None) or cluster_concurrency(job, len(keys))
    client, parent = _open_parent(job, name)
    cells = {k: _cell(job, name, *k, len(seeds) > 1, parent) for k in keys}
    log.info("sweep %s: %d cell(s), %d at a time (Ray Tune trials); MLflow parent run %s", name, len(cells),
             concurrency, parent)
    sweep_dir = Path(job.ray.storage_path).resolve() / name
    if not job.ray.verbose:  # Tune's own console (its configuration box, trial tables)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tuner = tune.Tuner(
        tune.with_resources(_trial, {"cpu": 0, "memory": 1}),  # the cell needs its Ray Train workers only (1 B: a bundle must hold something)
        param_space={"job": tune.grid_search([cell.model_dump(mode="json") for cell in cells.values()])},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=job.ray.max_failures)))
    with quiet("ray.tune", enabled=not job.ray.verbose, level=logging.WARNING):  # "Wrote the latest version…"
        results = tuner.fit()
    by_name = {cell.ray.name: k for k, cell in cells.items()}
    runs: list[dict[str, Any]] = []
    for r in results:
        method, ratio, seed = by_name[r.config["job"]["ray"]["name"]]
        if r.error is None and r.metrics and "auc" in r.metrics:
            if r.metrics.get("reused"):
                log.info("sweep: %s at %gx (seed %d): reusing run %s, finished earlier with the same settings",
                         method, ratio, seed, r.config["job"]["ray"]["name"])
            runs.append({"method": method, "ratio": ratio, "seed": seed, "status": "FINISHED",
                         "auc": r.metrics["auc"], "mlflow_run_id": r.metrics["mlflow_run_id"] or None,
                         "reused": bool(r.metrics.get("reused"))})
        else:
            error = f"{type(r.error).__name__}: {_cause(r.error)}" if r.error is not None else "no result reported"
            log.warning("sweep: %s at %gx (seed %d) failed: %s", method, ratio, seed, error)
            runs.append({"method": method, "ratio": ratio, "seed": seed, "status": "FAILED", "error": error})
    runs.sort(key=lambda x: (x["method"], x["ratio"], x["seed"]))
    rows = collect_runs(job.mlflow.tracking_uri, job.mlflow.experiment, tags={"sweep": name})
    plot_path = Path(plot) if plot else sweep_dir / "auc_vs_ratio.png"
    plot_auc_vs_ratio(rows, plot_path, title=f"{name}: AUC versus compression"
                      + (f" (mean ± sd over {len(seeds)} seeds)" if len(seeds) > 1 else ""))
    failed = sum(r["status"] != "FINISHED" for r in runs)
    result = {"sweep": name, "tracking_uri": resolve_uri(job.mlflow.tracking_uri),
              "experiment": job.mlflow.experiment, "parent_run_id": parent, "concurrency": concurrency,
              "seeds": seeds, "plot": str(plot_path), "runs": runs, "table": json.loads(to_json(rows)),
              "failed": failed}
    _close_parent(client, parent, format_table(rows, markdown=True), result, plot_path, failed)
    print(format_table(rows))
    log.info("plot: %s (also in MLflow parent run %s); MLflow UI filter: tags.sweep = '%s'", plot_path, parent, name)
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        write_text(output_json, json.dumps(result, indent=2) + "\n")
    return result


def _cause(error: BaseException) -> str:
    """A trial's error as the cell raised it (Tune wraps it: RayTaskError, TuneError)."""
    inner = getattr(error, "cause", None) or error.__cause__
    text = str(inner if inner is not None else error)
    return text.strip().splitlines()[-1] if text.strip() else type(error).__name__

