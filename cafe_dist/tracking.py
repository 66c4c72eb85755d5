"""MLflow tracking: one MLflow run per training run.

The driver opens the run (params = the flattened resolved config, tags, the config as an
artifact), hands its id to the workers, and closes it with the final metrics (status FAILED with
the error when training fails). Only rank 0 writes step metrics (loss, samples/s, AUC/logloss at
each evaluation, hot-set size, promotions, demotions, churn, sync overhead) and the sharding plan; other ranks never touch MLflow. Default store:
``sqlite:///mlflow.db`` in the working directory; ``mlflow.tracking_uri`` or
``MLFLOW_TRACKING_URI`` override it (use ``mlflow server`` on a cluster).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

DEFAULT_URI = "sqlite:///mlflow.db"


def resolve_uri(configured: str | None) -> str:
    """Config beats the environment beats the default; relative sqlite paths become absolute so
    workers in other directories write to the same store."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    import ray
    import torch
    import torchrec

    return {"ray_version": ray.__version__, "torch_version": torch.__version__,
            "torchrec_version": getattr(torchrec, "__version__", "unknown")}


class RunTracker:
    """Driver side: open, annotate and close the run."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        self.client = MlflowClient(uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:  # a sqlite store keeps its artifacts beside the database, not in the cwd
            location = None
            if uri.startswith("sqlite:///"):
                location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        self.run_id: str | None = None

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str], config_yaml: str) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        items = [(k, "null" if v is None else str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
        self.client.log_text(self.run_id, config_yaml, "config.yaml")
        return self.run_id

    def resume(self, run_id: str) -> bool:
        """Continue ``run_id`` (a re-run of a checkpointed job); False if this store does not hold it."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        return True

    def finish(self, final: dict[str, Any]) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(f"final_{k}" if k in ("auc", "logloss") else k, float(v), now, 0)
                   for k, v in final.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.client.log_text(self.run_id, json.dumps(final, indent=2, default=str), "result.json")
        self._plots()
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self, error: BaseException) -> None:
        if self.run_id is None:
            return
        self.client.set_tag(self.run_id, "error", f"{type(error).__name__}: {error}"[:5000])
        self.client.set_terminated(self.run_id, "FAILED")

    def _plots(self) -> None:
        """PNG artifacts from the logged step metrics: ``plots/curves.png`` (loss, AUC at each
        evaluation, samples/s) and, for CAFE, ``plots/hot_set.png`` (hot-set size, churn of the last
        sync, promotions/demotions so far, sync overhead)."""
        self._plot("curves.png", [("loss",), ("auc",), ("samples_per_sec",)])
        self._plot("hot_set.png", [("hot",), ("churn",), ("promoted", "demoted"), ("sync_overhead",)])

    def _plot(self, name: str, panels: list[tuple[str, ...]]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        history = {k: sorted(self.client.get_metric_history(self.run_id, k), key=lambda m: m.step)
                   for keys in panels for k in keys}
        panels = [keys for keys in panels if any(history[k] for k in keys)]
        if not panels:
            return
        fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.2 * len(panels)), squeeze=False, sharex=True)
        for ax, keys in zip(axes[:, 0], panels):
            for key in keys:
                hist = history[key]
                ax.plot([m.step for m in hist], [m.value for m in hist], marker="o" if len(hist) < 20 else None,
                        label=key)
            ax.set_ylabel(" / ".join(keys))
            if len(keys) > 1:
                ax.legend(fontsize="small")
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        tmp = Path(tempfile.mkdtemp()) / name
        tmp.write_bytes(buf.getvalue())
        self.client.log_artifact(self.run_id, str(tmp), "plots")
        shutil.rmtree(tmp.parent, ignore_errors=True)


def run_tags(method: str, ratio: float, world_size: int) -> dict[str, str]:
    return {"method": method, "compression_ratio": str(ratio), "world_size": str(world_size),
            "git_commit": _git_commit(), **_versions()}


class StepLogger:
    """Rank 0's view of the run: step metrics and the sharding plan."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.client = MlflowClient(uri)
        self.run_id = run_id

    def log(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)
