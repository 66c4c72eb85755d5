"""MLflow tracking: one MLflow run per training run.

The driver opens the run (params = the flattened resolved config, tags, the config as an
artifact), hands its id to the workers, and closes it with the final metrics (status FAILED with
the error when training fails). Only rank 0 writes step metrics (loss, samples/s, AUC/logloss at
each evaluation, and the method's own statistics, e.g. CAFE's hot-set size, promotions, demotions,
churn and sync overhead) and the sharding plan; other ranks never touch MLflow. Default store:
``sqlite:///mlflow.db`` in the working directory; ``mlflow.tracking_uri`` or
``MLFLOW_TRACKING_URI`` override it (use ``mlflow server`` on a cluster).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from cafe_dist.data import storage
from cafe_dist.logs import quiet
from cafe_dist.mlflow_store import open_store
from cafe_dist.result import RunResult


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


@dataclass(frozen=True)
class TrackedDataset:
    """The data a run trained on, as MLflow shows it in the run's inputs (and ``compare``'s data
    column): the dataset directory's name, where it is, its digest (the one its checkpoints record
    as ``data.digest``: the same data, the same digest; cafe_dist.resume.data_digest) and its rows."""

    name: str
    source: str
    digest: str
    rows: dict[str, int]

    @classmethod
    def of(cls, data_dir: str, digest: str, rows: dict[str, int]) -> TrackedDataset:
        return cls(storage.name(data_dir), str(data_dir), digest, dict(rows))

    def mlflow_input(self):
        from mlflow.entities import Dataset, DatasetInput, InputTag

        source_type = "uri" if storage.is_uri(self.source) else "local"
        return DatasetInput(Dataset(self.name, self.digest, source_type, json.dumps({"uri": self.source}),
                                    profile=json.dumps({"rows": self.rows})),
                            tags=[InputTag("mlflow.data.context", "training")])


class RunTracker:
    """Driver side: open, annotate and close the run."""

    def __init__(self, uri: str, experiment: str, method_plots: dict[str, tuple[tuple[str, ...], ...]] | None = None
                 ) -> None:
        self.uri = uri
        self.client, self.experiment_id = open_store(uri, experiment)
        self.run_id: str | None = None
        self.method_plots = method_plots or {}  # the method's own plots (CompressedEmbedding.plots)

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str], config_yaml: str,
              dataset: TrackedDataset | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={**tags, **({"dataset": dataset.name} if dataset else {})})
        self.run_id = run.info.run_id
        if dataset is not None:
            self.client.log_inputs(self.run_id, datasets=[dataset.mlflow_input()])
        items = [(k, "none" if v is None else str(v)[:6000]) for k, v in params.items()]
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

    def finish(self, result: RunResult) -> None:
        """Close the run with its result. Every final figure gets its own key (``final_<name>``) at
        the last step, so no step metric gains a second, out-of-order point; an error tag left by an
        earlier, interrupted attempt of this run is removed."""
        final = result.to_dict()
        now = int(time.time() * 1000)
        step = int(final.get("steps") or 0)
        metrics = [Metric(f"final_{k}", float(v), now, step)
                   for k, v in final.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.client.log_text(self.run_id, json.dumps(final, indent=2, default=str), "result.json")
        self._plots()
        if "error" in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, "error")
        self.client.set_terminated(self.run_id, "FINISHED")

    def log_model(self, run_dir: str, registered_name: str | None = None) -> str:
        """Export the run's newest checkpoint and log it as this run's pyfunc model ``model``
        (:mod:`cafe_dist.serving`); returns the model's URI."""
        import mlflow

        from cafe_dist.serving.export import export_checkpoint
        from cafe_dist.serving.pyfunc import log_pyfunc

        with tempfile.TemporaryDirectory() as tmp, quiet("cafe_dist.export"):  # a scratch copy: not news
            export_checkpoint(run_dir, Path(tmp, "model"))
            mlflow.set_tracking_uri(self.uri)
            with mlflow.start_run(run_id=self.run_id):
                return log_pyfunc(Path(tmp, "model"), registered_name)

    def fail(self, error: BaseException) -> None:
        if self.run_id is None:
            return
        self.client.set_tag(self.run_id, "error", f"{type(error).__name__}: {error}"[:5000])
        self.client.set_terminated(self.run_id, "FAILED")

    def _plots(self) -> None:
        """PNG artifacts from the logged step metrics: ``plots/curves.png`` (loss, AUC at each
        evaluation, samples/s) and the plots the method declares (CAFE: ``plots/hot_set.png`` with
        hot-set size, churn of the last sync, promotions/demotions so far, sync overhead)."""
        run_name = self.client.get_run(self.run_id).info.run_name
        self._plot("curves.png", [("loss",), ("auc",), ("samples_per_sec",)], f"{run_name}: training curves")
        for name, panels in self.method_plots.items():
            self._plot(name, list(panels), f"{run_name}: {name.removesuffix('.png').replace('_', ' ')}")

    def _plot(self, name: str, panels: list[tuple[str, ...]], title: str) -> None:
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
        fig.suptitle(title, fontsize="medium")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Title": title})  # and in the file, for whoever lists plots
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
