"""What the driver hands every worker: one frozen, typed spec instead of a string-keyed dict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cafe_dist.config import JobConfig
from cafe_dist.data.reader import SplitFiles
from cafe_dist.data.schema import DatasetMeta
from cafe_dist.embeddings.base import CompressedEmbedding, MethodOptions
from cafe_dist.model_spec import ModelSpec


@dataclass(frozen=True)
class MlflowTarget:
    """The MLflow run the driver opened; rank 0 logs step metrics into it."""

    uri: str
    run_id: str


@dataclass(frozen=True)
class WorkerSpec:
    job: JobConfig
    meta: DatasetMeta
    # the method's class and its settings, resolved on the driver: a method registered at run time
    # (cafe_dist.embeddings.registry.register) reaches the workers with them
    method: type[CompressedEmbedding]
    method_options: MethodOptions | None
    data_dir: str  # the dataset (local path or URI): the hot-set probe reads its metadata
    values: str | None  # the run's copy of its list of values (ModelSpec.values)
    run_dir: str  # where the run's checkpoints and markers live
    run_name: str  # also names the hot-set coordinator actor, where the method has one
    fit_id: str  # one per ``trainer.fit()``: worker-group starts of this fit are counted as restarts
    resume_key: dict[str, Any]  # the run's settings and their fingerprint, kept in every manifest
    splits: dict[str, SplitFiles]  # where each split's rows are: every worker reads its own
    service: bool = False  # the method's run service (CAFE's coordinator) is up for this run
    mlflow: MlflowTarget | None = None

    @property
    def model(self) -> ModelSpec:
        """The model this run trains (what a checkpoint records, and export rebuilds)."""
        return ModelSpec.from_job(self.job, self.method_options, klass=self.method, values=self.values)
