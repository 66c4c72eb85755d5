"""``cafe-dist export``: a checkpoint of a training run → a self-contained model directory
(:mod:`cafe_dist.serving.model`), readable without Ray or DMP."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cafe_dist.checkpoint import CheckpointError, find_latest, local_dir, verify
from cafe_dist.data import storage
from cafe_dist.data.schema import VOCAB_FILE as DATA_VOCAB
from cafe_dist.data.schema import DatasetMeta
from cafe_dist.embeddings.registry import method_class
from cafe_dist.serving.model import (
    FILES_DIR,
    FORMAT,
    MODEL_FILE,
    STATE_FILE,
    TABLE_PREFIX,
    VOCAB_FILE,
    WEIGHTS_FILE,
    build_dlrm,
    method_options,
    quantize_rows,
    tensor_bytes,
)

log = logging.getLogger("cafe_dist.export")


def resolve_checkpoint(location: str) -> str:
    """A checkpoint directory, or a run directory (its newest complete checkpoint with state)."""
    if "manifest-rank0.json" in storage.list_dir(location):
        return location
    found = find_latest(location)
    if found is None:
        raise FileNotFoundError(f"{location}: neither a checkpoint nor a run directory holding one with state "
                                "(a run keeps its tables only with checkpoint.at_end: true, the default)")
    return found.path


@dataclass(frozen=True)
class Trained:
    """A checkpoint's model rebuilt on the CPU without Ray or DMP: tables gathered from the shards,
    the method's state as rank 0 held it."""

    model: Any  # cafe_dist.model.DLRM
    info: dict[str, Any]  # the manifest's ``model`` entry
    meta: DatasetMeta
    options: Any
    manifest: dict[str, Any]
    path: str
    coordinator: dict[str, Any] | None = None  # CAFE: the merged hot-set state rank 0 checkpointed


def load_trained(checkpoint: str) -> Trained:
    """``checkpoint``: a checkpoint directory, or a run directory (its newest one with state)."""
    path = resolve_checkpoint(checkpoint)
    manifest = verify(path)
    info = manifest.get("model")
    if not info:
        raise CheckpointError(f"{path}: written before checkpoints recorded their model (no 'model' in its "
                              "manifest); train again to export")
    if not manifest.get("state", True):
        raise CheckpointError(f"{path}: holds a result only, no tables")
    meta = DatasetMeta.load(info["data_dir"])
    options = method_options(info)
    model = build_dlrm(info, meta, options, torch.device("cpu"))
    d = local_dir(path)
    import torch.distributed.checkpoint as dcp

    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "torch.distributed is disabled ... load in a single process": intended
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, storage_reader=dcp.FileSystemReader(d),
                 planner=dcp.DefaultLoadPlanner(allow_partial_load=True))
    model.load_state_dict(state["model"])
    rank0 = torch.load(Path(d) / "rank0.pt", weights_only=False)  # every rank holds the same hot map / id maps
    model.embedding.load_local_state(rank0.get("embedding", {}))
    return Trained(model, info, meta, options, manifest, path, rank0.get("coordinator"))


def export_checkpoint(checkpoint: str, out: str | Path, quantize: str | None = None) -> dict[str, Any]:
    """Write the model of ``checkpoint`` (or of a run directory's newest checkpoint) to ``out``,
    which must not exist yet (it appears complete or not at all). Returns ``model.json``'s content."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; export writes a new directory (remove it or choose another)")
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be int8 or absent, got {quantize!r}")
    trained = load_trained(checkpoint)
    model, info, meta, manifest, path = trained.model, trained.info, trained.meta, trained.manifest, trained.path
    cls, options = method_class(info["method"]), trained.options

    out.parent.mkdir(parents=True, exist_ok=True)  # staged beside it: one rename publishes it whole
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        weights, table_bytes = {}, 0
        for k, v in model.state_dict().items():
            if k.startswith(TABLE_PREFIX) and v.dim() == 2 and quantize == "int8":
                weights[k] = quantize_rows(v)
            else:
                weights[k] = v.detach().clone()
            if k.startswith(TABLE_PREFIX):
                table_bytes += tensor_bytes(weights[k])
        serving = model.embedding.serving_state()

        def move(src: str) -> str:
            name = f"{FILES_DIR}/{Path(src).name}"
            (stage / FILES_DIR).mkdir(exist_ok=True)
            (stage / name).write_bytes(storage.read_bytes(src))
            return name

        portable = cls.portable_options(options, move)
        torch.save(weights, stage / WEIGHTS_FILE)
        torch.save(serving, stage / STATE_FILE)
        (stage / VOCAB_FILE).write_bytes(storage.read_bytes(storage.join(info["data_dir"], DATA_VOCAB)))
        dense_bytes = sum(tensor_bytes(v) for k, v in weights.items() if not k.startswith(TABLE_PREFIX))
        state_bytes = tensor_bytes(serving) + tensor_bytes(dict(model.embedding.named_buffers()))
        emb = model.embedding
        doc = {"format": FORMAT, **{k: info[k] for k in ("method", "compression_ratio", "dim", "dense_arch",
                                                         "over_arch", "seed")},
               "options": portable.model_dump(mode="json") if portable is not None else None,
               "options_set": sorted(portable.model_fields_set) if portable is not None else None,
               "meta": {**meta.__dict__}, "quantize": quantize,
               "source": {"checkpoint": path, "step": manifest["step"], "run_name": manifest.get("run_name"),
                          "mlflow_run_id": manifest.get("mlflow_run_id")},
               "bytes": {"tables": table_bytes, "method_state": state_bytes, "embeddings": table_bytes + state_bytes,
                         "dense": dense_bytes, "training_embedding_bytes": emb.embedding_bytes(),
                         "full_embedding_bytes": emb.full_embedding_bytes(),
                         "vocab": (stage / VOCAB_FILE).stat().st_size}}
        (stage / MODEL_FILE).write_text(json.dumps(doc, indent=1, default=str))
        stage.replace(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("exported %s (step %d, %s at %gx%s) to %s: embeddings %s bytes, dense %s bytes", path, manifest["step"],
             info["method"], info["compression_ratio"], ", int8" if quantize else "", out,
             f"{doc['bytes']['embeddings']:,}", f"{dense_bytes:,}")
    return doc
