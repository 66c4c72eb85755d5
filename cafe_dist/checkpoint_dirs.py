"""Checkpoints that a crash cannot fake: written through ``ray.train.report``, verified on resume.

One checkpoint is one directory ``<storage_path>/<run name>/checkpoint_step<NNNNNNNN>`` that every
rank contributes to (Ray Train merges the ranks' directories on upload):

- ``.metadata`` and ``__<rank>_0.distcp``: ``torch.distributed.checkpoint`` (DCP) files of the
  sharded DMP state (tables, fused optimizer state), the dense model and its optimizer;
- ``rank<r>.pt``: what only that rank holds: its HotSketch and hot map, the data position, RNG
  states, counters; rank 0's also holds the coordinator's state and the MLflow run id;
- ``manifest-rank<r>.json``, written last: size and SHA-256 of every file that rank wrote.

A checkpoint is complete only when every rank's manifest is there and every file it lists has
that size and hash, so a crash in the middle of writing or uploading (or a later truncation)
never leaves one that looks complete: :func:`find_latest` skips it and falls back to the newest
complete one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cafe_dist.data import storage

log = logging.getLogger(__name__)

PREFIX = "checkpoint_step"
_NAME = re.compile(rf"^{PREFIX}(\d+)(_end)?$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says which and why."""


def dir_name(step: int, final: bool = False) -> str:
    return f"{PREFIX}{step:08d}" + ("_end" if final else "")


def _manifest(rank: int) -> str:
    return f"manifest-rank{rank}.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_rank_files(directory: str | Path, rank: int, world_size: int, step: int,
                     dcp_state: dict[str, Any] | None, local_state: dict[str, Any] | None,
                     extra_files: dict[str, str] | None = None, info: dict[str, Any] | None = None) -> None:
    """This rank's part of the checkpoint at ``step`` into ``directory`` (a local staging dir).
    ``dcp_state`` is saved with DCP, a collective every rank joins; ``local_state`` is None for a
    result-only checkpoint (no state to resume from). The manifest comes last."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if dcp_state is not None:
        import torch.distributed.checkpoint as dcp

        dcp.save(dcp_state, storage_writer=dcp.FileSystemWriter(str(d)))
    if local_state is not None:
        torch.save(local_state, d / f"rank{rank}.pt")
    for name, text in (extra_files or {}).items():
        (d / name).write_text(text)
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p.read_bytes())}
             for p in sorted(d.iterdir()) if p.is_file() and not p.name.startswith("manifest-rank")}
    manifest = {"step": step, "rank": rank, "world_size": world_size, "state": local_state is not None,
                "files": files, **(info or {})}
    tmp = d / (_manifest(rank) + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(d / _manifest(rank))


@dataclass(frozen=True)
class Found:
    """A verified checkpoint."""

    path: str
    step: int
    world_size: int
    info: dict[str, Any]  # rank 0's manifest (mlflow_run_id, config, config_fingerprint, ...)
    skipped: list[str] = field(default_factory=list)  # newer checkpoints that failed verification, and why
    final: bool = False  # written after the last step (holds result.json)


def verify(path: str) -> dict[str, Any]:
    """Rank 0's manifest of a complete checkpoint; :class:`CheckpointError` naming the first
    missing or damaged file otherwise."""
    entries = storage.list_dir(path)
    if _manifest(0) not in entries:
        raise CheckpointError(f"{path}: no {_manifest(0)} (never finished)")
    first = json.loads(storage.read_bytes(storage.join(path, _manifest(0))))
    for rank in range(int(first["world_size"])):
        name = _manifest(rank)
        if name not in entries:
            raise CheckpointError(f"{path}: no {name} (rank {rank} never finished)")
        manifest = first if rank == 0 else json.loads(storage.read_bytes(storage.join(path, name)))
        for fname, want in manifest["files"].items():
            if entries.get(fname) != want["size"]:
                raise CheckpointError(f"{path}/{fname}: {entries.get(fname)} bytes, manifest says {want['size']}")
            if _sha256(storage.read_bytes(storage.join(path, fname))) != want["sha256"]:
                raise CheckpointError(f"{path}/{fname}: SHA-256 differs from the manifest")
    return first


def scan(run_dir: str) -> tuple[Found | None, Found | None]:
    """(the newest complete checkpoint, the newest complete one with state) under ``run_dir``;
    damaged newer ones are reported on stderr and skipped."""
    candidates = []
    for name, size in storage.list_dir(run_dir).items():
        m = _NAME.match(name)
        if m and size is None:
            candidates.append((int(m.group(1)), m.group(2) is not None, name))
    skipped: list[str] = []
    newest = None
    for step, final, name in sorted(candidates, reverse=True):
        path = storage.join(run_dir, name)
        try:
            info = verify(path)
        except (CheckpointError, OSError, ValueError, KeyError) as e:
            skipped.append(f"{name}: {e}")
            log.warning("skipping checkpoint %s", e)
            continue
        found = Found(path, step, int(info["world_size"]), info, list(skipped), final)
        newest = newest or found
        if info.get("state", True):  # else a result-only checkpoint (state saved in the one before, same step)
            return newest, found
    return newest, None


def find_latest(run_dir: str) -> Found | None:
    """The newest complete checkpoint with state under ``run_dir``."""
    return scan(run_dir)[1]


def local_dir(path: str) -> str:
    """A local directory holding the checkpoint at ``path`` (downloaded if it is a URI)."""
    if not storage.is_uri(path):
        return path
    import ray.train

    return ray.train.Checkpoint(path).as_directory().__enter__()  # kept for the process's life


def load_rank_files(path: str, ranks: list[int], dcp_state: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Load the DCP state into ``dcp_state`` in place (a collective; DCP reshards whatever sharding
    wrote it) and return the local states of ``ranks`` (this rank's, or every old rank's when the
    world size changed: cafe_dist.train.elastic)."""
    d = local_dir(path)
    if dcp_state is not None:
        import torch.distributed.checkpoint as dcp

        dcp.load(dcp_state, storage_reader=dcp.FileSystemReader(d))
    return [torch.load(Path(d) / f"rank{r}.pt", weights_only=False) for r in ranks]


RUN_DATASET = "dataset"  # <run dir>/dataset/: meta.json and values.parquet as the run trained with them
RUN_COMPLETE = ".complete"  # written last: the copy is whole


def run_values(run_dir: str) -> str | None:
    """The run's copy of its list of values, or None (the run has none: every feature hashed)."""
    from cafe_dist.data.schema import VALUES_FILE

    path = storage.join(run_dir, RUN_DATASET, VALUES_FILE)
    return path if storage.is_file(path) else None


def keep_run_dataset(run_dir: str, data_dir: str, values: str | None) -> str | None:
    """Copy the dataset's description and the run's list of values (``values``: the dataset's, or
    full's vocabulary) beside the run's checkpoints (once), so its model can be exported and served
    after the data folder is regenerated or converted again. Returns the copy's location."""
    from cafe_dist.data.schema import META_FILE, VALUES_FILE

    own = storage.join(run_dir, RUN_DATASET)
    if not storage.is_file(storage.join(own, RUN_COMPLETE)):
        storage.write_bytes(storage.join(own, META_FILE), storage.read_bytes(storage.join(data_dir, META_FILE)))
        if values is not None:
            storage.write_bytes(storage.join(own, VALUES_FILE), storage.read_bytes(values))
        storage.write_bytes(storage.join(own, RUN_COMPLETE), b"")
    return run_values(run_dir)


def resize_message(found: Found, world_size: int) -> str:
    return (f"the checkpoint {found.path} (step {found.step}) was written by {found.world_size} workers and this "
            f"run has {world_size}. Its tables would reshard (DCP can), but the data position is per worker "
            f"(each worker's place in its own split of the stream) and so are the HotSketches, so training "
            f"cannot continue exactly where it stopped. Resume with ray.num_workers={found.world_size}, or start "
            f"a new run (another ray.name) to train on {world_size} workers from scratch; a run started with "
            f"ray.elastic=true resumes on any number of workers.")
