"""``cafe-dist export``: a checkpoint of a training run → a self-contained model directory
(:mod:`cafe_dist.serving.model`), readable without Ray or DMP."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cafe_dist.checkpoint_dirs import (
    RUN_COMPLETE,
    RUN_DATASET,
    CheckpointError,
    find_latest,
    local_dir,
    verify,
)
from cafe_dist.data import storage
from cafe_dist.data.schema import DatasetMeta, values_file
from cafe_dist.data.vocabulary import write_values
from cafe_dist.embeddings.registry import method_class
from cafe_dist.embeddings.service import CHECKPOINT_PART
from cafe_dist.errors import BadInputError, disk_full
from cafe_dist.model_spec import ModelSpec
from cafe_dist.outputs import check_new_dir
from cafe_dist.serving.model import (
    FILES_DIR,
    FORMAT,
    MODEL_FILE,
    STATE_FILE,
    TABLE_PREFIX,
    VALUES_FILE,
    WEIGHTS_FILE,
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
    values: str | None  # the list of values the run trained with (ModelSpec.values)
    coordinator: dict[str, Any] | None = None  # the method's run service's state (CAFE: the merged hot set)


def run_dataset(info: dict[str, Any], manifest: dict[str, Any], path: str) -> tuple[DatasetMeta, str | None]:
    """The dataset description and the list of values a run trained with: its own copies beside
    its checkpoints, so a dataset regenerated or converted again since changes nothing. A checkpoint
    without them (copied away from its run) reads ``data_dir``'s, and refuses when that dataset is
    gone or is another one (its ``meta.json`` digest differs from the recorded one) rather than
    mapping raw values to rows the tables never learned."""
    from cafe_dist.checkpoint_dirs import run_values
    from cafe_dist.resume import data_digest

    if "values" not in info:
        raise CheckpointError(old_ids_message(path))
    run_dir = storage.parent(path)
    own = storage.join(run_dir, RUN_DATASET)
    if storage.is_file(storage.join(own, RUN_COMPLETE)):
        return DatasetMeta.load(own), run_values(run_dir)
    try:
        current = DatasetMeta.load(info["data_dir"])
    except (FileNotFoundError, BadInputError, OSError):
        current = None
    recorded = manifest.get("config", {}).get("data.digest")
    if current is None or (recorded is not None and data_digest(current) != recorded):
        what = "is gone" if current is None else "was regenerated or converted again since the run trained"
        raise CheckpointError(
            f"{path}: the run's dataset {info['data_dir']} {what}, and the checkpoint has no copy of its list of "
            f"values (raw value -> row of the uncompressed tables; a run keeps one in {RUN_DATASET}/ beside its "
            "checkpoints). Restore that dataset (convert the same files, or keep the same data.synthetic settings) "
            "and try again; nothing was written.")
    return current, info.get("values") and values_file(info["data_dir"])


def old_ids_message(path: str) -> str:
    return (f"{path}: this run trained on contiguous vocabulary ids (cafe-dist before raw ids, 2026-12); its "
            "tables do not match raw values. Train it again (the same job, another ray.name), or export it with "
            "the cafe-dist version that trained it.")


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
    meta, values = run_dataset(info, manifest, path)
    spec = ModelSpec.from_json(info).with_values(values)
    model = spec.build(meta, torch.device("cpu"))
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
    return Trained(model, info, meta, spec.options, manifest, path, values, rank0.get(CHECKPOINT_PART))


def _publish(stage: Path, out: Path) -> None:
    """One rename makes the export appear whole; never onto another export that appeared meanwhile
    (two exports to one ``--out``: the second is refused, the first stays)."""
    if not out.exists():
        try:
            os.rename(stage, out)
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    raise BadInputError(f"--out {out} appeared while this export ran (another export to the same place?); it is "
                        "left as it is and this export was discarded: choose another --out")


def export_checkpoint(checkpoint: str, out: str | Path, quantize: str | None = None) -> dict[str, Any]:
    """Write the model of ``checkpoint`` (or of a run directory's newest checkpoint) to ``out``,
    which must not exist yet (it appears complete or not at all). Returns ``model.json``'s content."""
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be int8 or absent, got {quantize!r}")
    out = check_new_dir(out, flag="--out")  # before the checkpoint is read: a bad --out is said at once
    trained = load_trained(checkpoint)
    model, info, meta, manifest, path = trained.model, trained.info, trained.meta, trained.manifest, trained.path
    cls, options = method_class(info["method"]), trained.options

    # staged beside it (check_new_dir made the parent): one rename publishes it whole
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
        for name, obj in ((WEIGHTS_FILE, weights), (STATE_FILE, serving)):
            with open(stage / name, "wb") as f:  # Python's writes, so a full disk says ENOSPC (torch's own
                torch.save(obj, f)               # file writer only says "iostream error")
        emb = model.embedding
        if emb.known:  # the lists of the uncompressed features alone (full: its vocabulary)
            write_values(str(stage / VALUES_FILE), list(meta.sparse_features), emb.known)
        dense_bytes = sum(tensor_bytes(v) for k, v in weights.items() if not k.startswith(TABLE_PREFIX))
        state_bytes = tensor_bytes(serving) + tensor_bytes(dict(emb.named_buffers()))
        values_bytes = (stage / VALUES_FILE).stat().st_size if emb.known else 0
        doc = {"format": FORMAT, **{k: info[k] for k in ("method", "compression_ratio", "dim", "dense_arch",
                                                         "over_arch", "seed")},
               "values": VALUES_FILE if emb.known else None,
               "options": portable.model_dump(mode="json") if portable is not None else None,
               "options_set": sorted(portable.model_fields_set) if portable is not None else None,
               "meta": {**meta.__dict__}, "quantize": quantize,
               "source": {"checkpoint": path, "step": manifest["step"], "run_name": manifest.get("run_name"),
                          "mlflow_run_id": manifest.get("mlflow_run_id")},
               "bytes": {"tables": table_bytes, "method_state": state_bytes, "embeddings": table_bytes + state_bytes,
                         "dense": dense_bytes, "training_embedding_bytes": emb.embedding_bytes(),
                         "full_embedding_bytes": emb.full_embedding_bytes(),
                         "values": values_bytes}}
        (stage / MODEL_FILE).write_text(json.dumps(doc, indent=1, default=str))
        _publish(stage, out)
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        if disk_full(e):
            raise BadInputError(f"disk full while exporting to {out}; the partial export was removed and nothing "
                                "was written there (free space, or choose another --out)") from None
        raise
    log.info("exported %s (step %d, %s at %gx%s) to %s: embeddings %s bytes, dense %s bytes", path, manifest["step"],
             info["method"], info["compression_ratio"], ", int8" if quantize else "", out,
             f"{doc['bytes']['embeddings']:,}", f"{dense_bytes:,}")
    return doc
