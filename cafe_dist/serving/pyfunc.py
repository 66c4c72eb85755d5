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
from cafe_dist.errors import BadInputError
from cafe_dist.logs import quiet
from cafe_dist.serving.model import MODEL_FILE, ServedModel

log = logging.getLogger("cafe_dist.serving")
ARTIFACT = "cafe_dist_model"  # the exported directory's name among the pyfunc model's artifacts


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _shown(value: Any) -> str:
    """A request's value as the user sent it (``inf``, ``'abc'``), not as numpy prints it."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def raw_arrays(frame: pd.DataFrame, dense: list[str], sparse: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Criteo's raw fields as a request sends them (numbers, possibly null; 8-digit hex strings,
    possibly null or empty) → (dense after log(1+x), raw categorical values), as conversion does.
    Anything else is refused with the column and row (:class:`BadInputError`): a request is not a
    log file, so there is no malformed line to skip, and a guess (inf → a huge score, the number
    12345 read as hex 0x12345) would be a wrong answer with status 200."""
    missing = [c for c in (*dense, *sparse) if c not in frame.columns]
    if missing:
        raise BadInputError(f"the input lacks column(s) {', '.join(missing)}; send the raw Criteo fields "
                            f"{dense[0]}..{dense[-1]}, {sparse[0]}..{sparse[-1]} (null for a missing value)")
    n = len(frame)
    if n == 0:
        raise BadInputError("the input holds no rows; send at least one")
    d = np.zeros((n, len(dense)), np.float32)
    for j, c in enumerate(dense):
        given = frame[c].notna().to_numpy()
        col = pd.to_numeric(frame[c], errors="coerce").astype(np.float64)
        values = col.to_numpy(np.float64, na_value=np.nan)
        bad = given & ~np.isfinite(values)
        if bad.any():
            row = _first(bad)
            raise BadInputError(f"column {c}, row {row}: {_shown(frame[c].iloc[row])} is not a finite number; dense "
                                "fields take numbers (null when missing)")
        d[:, j] = dense_transform(np.nan_to_num(values), given)
    raw = np.empty((len(sparse), n), np.int64)
    for j, c in enumerate(sparse):
        kind = pd.api.types.infer_dtype(frame[c], skipna=True)
        if kind not in ("string", "empty"):  # e.g. the JSON number 12345: which hex string was meant?
            row = _first(~frame[c].map(lambda v: v is None or isinstance(v, str) or v != v).to_numpy(bool))
            value = frame[c].iloc[row]
            kind = "number" if isinstance(value, (int, float, np.number)) else type(value).__name__
            raise BadInputError(f"column {c}, row {row}: {_shown(value)} is a {kind}, not a string; categorical fields "
                                "take Criteo's hex strings (e.g. \"68fd1e64\"), null or \"\" when missing")
        col = frame[c].astype("string").fillna("")
        values, ok = parse_hex32(pa.array(col.to_numpy(dtype=object), type=pa.string()))
        if not ok.all():
            row = _first(~ok)
            raise BadInputError(f"column {c}, row {row}: {col.iloc[row]!r} is not an up-to-8-digit hex value")
        raw[j] = values  # empty or null: MISSING_ID, as in conversion
    return d, raw


class CafeDistModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        self.model = ServedModel.load(context.artifacts[ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        meta = self.model.meta
        try:
            dense, raw = raw_arrays(model_input, list(meta.dense_features), list(meta.sparse_features))
        except BadInputError as e:  # HTTP 400 with the sentence as its message (not only in the stack trace)
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
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


def resolve_model(location: str, dst: str | None = None) -> Path:
    """An exported directory, or an MLflow model URI (``runs:/ID/model``, ``models:/NAME/VERSION``):
    downloaded into ``dst`` (the caller removes it; None: MLflow's own temporary folder), and the
    exported directory inside it found."""
    if Path(location).is_dir():
        return Path(location)
    if ":/" not in location:
        raise FileNotFoundError(f"{location}: no such model directory (or runs:/ID/model, models:/NAME/VERSION)")
    from mlflow.exceptions import MlflowException

    from cafe_dist.errors import BadInputError
    from cafe_dist.tracking import finished_run, resolve_uri

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
