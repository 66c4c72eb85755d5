"""``cafe-dist sweep``: one tracked training run per (method, compression ratio), then the comparison.

Every run of a sweep carries the MLflow tag ``sweep=<name>``, so ``cafe-dist compare`` and the MLflow
UI (filter ``tags.sweep = '<name>'``) show exactly that grid. A run that fails is recorded (FAILED in
MLflow, its error printed) and the sweep goes on with the rest; the exit status says whether all ran.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from cafe_dist.compare import collect_runs, format_table, plot_auc_vs_ratio, to_json
from cafe_dist.config import ConfigError, JobConfig
from cafe_dist.mlflow_store import resolve_uri
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


def _cell(job: JobConfig, name: str, method: str, ratio: float) -> JobConfig:
    raw = job.model_dump()
    raw["embedding"].update(method=method, compression_ratio=ratio)
    raw["ray"]["name"] = f"{name}-{method}-{ratio:g}x"
    raw["mlflow"]["run_tags"] = {**raw["mlflow"]["run_tags"], "sweep": name}
    return JobConfig.model_validate(raw)


def _check_cells(name: str, cells: dict[tuple[str, float], JobConfig]) -> None:
    """Refuse the whole sweep, before anything runs, when a cell of an earlier sweep of this name was
    made with other settings (re-running it would report that old result as the new one)."""
    from cafe_dist.data.storage import join, resolve
    from cafe_dist.resume import decide
    from cafe_dist.train.launcher import ensure_data

    meta = ensure_data(next(iter(cells.values())))
    refused = []
    for (method, ratio), cell in cells.items():
        try:
            decide(cell, meta, cell.ray.name, join(resolve(cell.ray.storage_path), cell.ray.name))
        except ConfigError as e:
            refused.append(f"{method} at {ratio:g}x: {e}")
    if refused:
        raise ConfigError(f"sweep {name!r} already has runs made with other settings; nothing was run.\n"
                          + "\n".join(refused) + f"\nFor a sweep under the new settings pass another --name "
                          f"(not {name!r}), or --resume force to continue these runs anyway.")


def run_sweep(job: JobConfig, methods: list[str] | None = None, ratios: list[float] | None = None,
              plot: str | Path | None = None, output_json: str | Path | None = None) -> dict[str, Any]:
    from cafe_dist.train.launcher import run_training

    methods, ratios = grid(job, methods, ratios)
    name = (job.sweep.name if job.sweep and job.sweep.name else None) or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    cells = {(m, r): _cell(job, name, m, r) for m in methods for r in ratios}
    _check_cells(name, cells)
    runs: list[dict[str, Any]] = []
    for i, ((method, ratio), cell) in enumerate(cells.items(), 1):
        log.info("sweep %d/%d: %s at %gx", i, len(cells), method, ratio)
        try:
            out = run_training(cell)
            if out.already_finished:
                log.info("sweep: %s at %gx: reusing run %s, finished earlier with the same settings (config "
                         "fingerprint matches)", method, ratio, cell.ray.name)
            runs.append({"method": method, "ratio": ratio, "status": "FINISHED", "auc": out.auc,
                         "mlflow_run_id": out.mlflow_run_id, "reused": out.already_finished})
        except Exception as e:  # noqa: BLE001 - one bad cell must not cost the rest of the grid
            log.warning("sweep: %s at %gx failed: %s: %s", method, ratio, type(e).__name__, e)
            runs.append({"method": method, "ratio": ratio, "status": "FAILED", "error": f"{type(e).__name__}: {e}"})
    rows = collect_runs(job.mlflow.tracking_uri, job.mlflow.experiment, tags={"sweep": name})
    plot_path = Path(plot) if plot else Path(job.ray.storage_path) / name / "auc_vs_ratio.png"
    plot_auc_vs_ratio(rows, plot_path, title=f"{name}: AUC versus compression")
    result = {"sweep": name, "tracking_uri": resolve_uri(job.mlflow.tracking_uri),
              "experiment": job.mlflow.experiment, "plot": str(plot_path), "runs": runs,
              "table": json.loads(to_json(rows)), "failed": sum(r["status"] != "FINISHED" for r in runs)}
    print(format_table(rows))
    log.info("plot: %s; MLflow UI filter: tags.sweep = '%s'", plot_path, name)
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        write_text(output_json, json.dumps(result, indent=2) + "\n")
    return result
