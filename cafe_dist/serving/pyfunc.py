"""The MLflow pyfunc flavour of an exported model: raw rows of its data's format in (Criteo's
fields, a CSV spec's columns, ...: :mod:`cafe_dist.data.formats`), click probabilities out,
so ``mlflow models serve -m runs:/<id>/model`` answers ``/invocations`` with no cafe-dist code in
the request path beyond this class."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from cafe_dist.data.formats import format_of
from cafe_dist.data.schema import DatasetMeta
from cafe_dist.errors import BadInputError
from cafe_dist.logs import quiet
from cafe_dist.serving.model import MODEL_FILE, ServedModel

log = logging.getLogger("cafe_dist.serving")
ARTIFACT = "cafe_dist_model"  # the exported directory's name among the pyfunc model's artifacts


class CafeDistModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        self.model = ServedModel.load(context.artifacts[ARTIFACT])
        self.format = format_of(self.model.meta)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:  # the same parser as the model's data conversion (cafe_dist.data.formats)
            dense, raw = self.format.request_arrays(model_input)
        except BadInputError as e:  # HTTP 400 with the sentence as its message (not only in the stack trace)
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        return pd.DataFrame({"score": self.model.score(dense, raw)})


def log_pyfunc(model_dir: str | Path, registered_name: str | None = None) -> str:
    """Log the exported ``model_dir`` as the active MLflow run's pyfunc model ``model``; returns its URI."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    # the signature needs the features only: model.json has them (export just built and wrote the model)
    fmt = format_of(DatasetMeta(**json.loads((Path(model_dir) / MODEL_FILE).read_text())["meta"]))
    numeric = fmt.numeric_columns()
    inputs = Schema([ColSpec("double" if c in numeric else "string", c, required=False) for c in fmt.request_columns()])
    signature = ModelSignature(inputs=inputs, outputs=Schema([ColSpec("float", "score")]))
    import torch
    import torchrec

    example = pd.DataFrame({c: [v] for c, v in fmt.example().items()})
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's notices on pickled models and input examples: nothing to act on here
    with quiet("mlflow"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=CafeDistModel(), artifacts={ARTIFACT: str(model_dir)},
            signature=signature, input_example=example, registered_model_name=registered_name,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"torchrec=={torchrec.__version__}",
                              "cafe-dist"])
    return info.model_uri


def resolve_model(location: str, dst: str | None = None) -> Path:
    """An exported directory, or an MLflow model URI (``runs:/ID/model``, ``models:/NAME/VERSION``):
    downloaded into ``dst`` (the caller removes it; None: MLflow's own temporary folder), and the
    exported directory inside it found."""
    if Path(location).is_dir():
        return Path(location)
    if ":/" not in location:
        raise FileNotFoundError(f"{location}: no such model directory (or runs:/ID/model, models:/NAME/VERSION)")
    from mlflow.exceptions import MlflowException

    from cafe_dist.mlflow_store import finished_run, resolve_uri

    uri = resolve_uri(None)  # $MLFLOW_TRACKING_URI, else the local default store
    if location.startswith("runs:/"):
        finished_run(location[len("runs:/"):].split("/", 1)[0], uri)  # unknown or FAILED: said so
    mlflow.set_tracking_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(location, dst_path=dst))
    except MlflowException as e:
        raise BadInputError(f"{location}: not found in the MLflow store {uri} ({e.message.splitlines()[0]})") from None
    found = sorted(local.rglob(MODEL_FILE))
    if not found:
        raise FileNotFoundError(f"{location}: downloaded to {local} but holds no {MODEL_FILE}")
    return found[0].parent
