"""The MLflow pyfunc flavour of an exported model: raw Criteo rows in, click probabilities out,
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
import numpy as np
import pandas as pd
import pyarrow as pa

from cafe_dist.data.parsing import dense_transform, parse_hex32
from cafe_dist.data.schema import DatasetMeta
from cafe_dist.logs import quiet
from cafe_dist.serving.model import MODEL_FILE, ServedModel

log = logging.getLogger("cafe_dist.serving")
ARTIFACT = "cafe_dist_model"  # the exported directory's name among the pyfunc model's artifacts


def raw_arrays(frame: pd.DataFrame, dense: list[str], sparse: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Criteo's raw fields as a request sends them (integers, possibly null; 8-digit hex strings,
    possibly null or empty) → (dense after log(1+x), raw categorical values), as conversion does."""
    missing = [c for c in (*dense, *sparse) if c not in frame.columns]
    if missing:
        raise ValueError(f"the input lacks column(s) {', '.join(missing)}; send the raw Criteo fields "
                         f"{dense[0]}..{dense[-1]}, {sparse[0]}..{sparse[-1]}")
    n = len(frame)
    d = np.zeros((n, len(dense)), np.float32)
    for j, c in enumerate(dense):
        col = pd.to_numeric(frame[c], errors="coerce")
        d[:, j] = dense_transform(col.fillna(0).to_numpy(np.float64), col.notna().to_numpy())
    raw = np.empty((len(sparse), n), np.int64)
    for j, c in enumerate(sparse):
        col = frame[c].astype("string").fillna("")
        values, ok = parse_hex32(pa.array(col.to_numpy(dtype=object), type=pa.string()))
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise ValueError(f"column {c}, row {row}: {col.iloc[row]!r} is not an up-to-8-digit hex value")
        raw[j] = values  # empty or null: MISSING_ID, as in conversion
    return d, raw


class CafeDistModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        self.model = ServedModel.load(context.artifacts[ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        meta = self.model.meta
        dense, raw = raw_arrays(model_input, list(meta.dense_features), list(meta.sparse_features))
        return pd.DataFrame({"score": self.model.score(dense, raw)})


def log_pyfunc(model_dir: str | Path, registered_name: str | None = None) -> str:
    """Log the exported ``model_dir`` as the active MLflow run's pyfunc model ``model``; returns its URI."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    # the signature needs the features only: model.json has them (export just built and wrote the model)
    meta = DatasetMeta(**json.loads((Path(model_dir) / MODEL_FILE).read_text())["meta"])
    if meta.format == "avazu":
        raise ValueError("the pyfunc flavour takes raw Criteo fields; Avazu models are scored with "
                         "`cafe-dist predict`")
    inputs = Schema([ColSpec("double", c, required=False) for c in meta.dense_features]
                    + [ColSpec("string", c, required=False) for c in meta.sparse_features])
    signature = ModelSignature(inputs=inputs, outputs=Schema([ColSpec("float", "score")]))
    import torch
    import torchrec

    example = pd.DataFrame({**{c: [1.0] for c in meta.dense_features}, **{c: ["68fd1e64"] for c in meta.sparse_features}})
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


def resolve_model(location: str) -> Path:
    """An exported directory, or an MLflow model URI (``runs:/ID/model``, ``models:/NAME/VERSION``):
    downloaded, and the exported directory inside it found."""
    if Path(location).is_dir():
        return Path(location)
    if ":/" not in location:
        raise FileNotFoundError(f"{location}: no such model directory (or runs:/ID/model, models:/NAME/VERSION)")
    from cafe_dist.tracking import resolve_uri

    mlflow.set_tracking_uri(resolve_uri(None))  # $MLFLOW_TRACKING_URI, else the local default store
    local = Path(mlflow.artifacts.download_artifacts(location))
    found = sorted(local.rglob(MODEL_FILE))
    if not found:
        raise FileNotFoundError(f"{location}: downloaded to {local} but holds no {MODEL_FILE}")
    return found[0].parent
