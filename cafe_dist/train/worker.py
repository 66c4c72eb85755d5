"""What every Ray Train worker runs: its logging, its place in the group, and the :class:`Trainer`."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from typing import Any

import ray.train
import torch

from cafe_dist.errors import USER_ERRORS
from cafe_dist.train.spec import WorkerSpec
from cafe_dist.train.trainer import Trainer, WorkerContext


def _context(spec: WorkerSpec) -> WorkerContext:
    ctx = ray.train.get_context()
    if spec.job.ray.use_gpu:
        device = torch.device("cuda", ctx.get_local_rank())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_world_size(), device)


def _logging(rank: int, verbose: bool, label: str = "") -> None:
    """One line per event, from rank 0; another rank speaks only with a warning (a fault, an error).
    Ray forwards the worker's stdout to the driver's console. Unless ``verbose``, the libraries'
    INFO logs (fbgemm's loads and TBE settings, TorchRec's planner tables: they reach Ray Train's
    root handler) and their warnings stay out. ``label``: said before each line (a sweep's cell: its
    cells train side by side)."""
    if not verbose:
        logging.getLogger().setLevel(logging.WARNING)
        for lib in ("torchrec", "fbgemm_gpu", "torch"):  # warnings about their own internals: nothing to act on
            logging.getLogger(lib).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=r"(torchrec|fbgemm_gpu|torch)\b")
        for category in (UserWarning, FutureWarning, DeprecationWarning):  # e.g. torch's ShardedTensor deprecation
            warnings.filterwarnings("ignore", category=category)
    logger = logging.getLogger("cafe_dist")
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"[cafe-dist] {label + ': ' if label else ''}%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    if not verbose:
        logging.getLogger("ray.train.v2._internal.util").addFilter(_NoUserErrorTracebacks())


class _NoUserErrorTracebacks(logging.Filter):
    """Ray Train logs every training-function error with its traceback on the worker; for our own
    errors (bad data, divergence) the driver prints the message as the first line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f"cafe_dist.errors.{cls.__name__}:" in record.getMessage() for cls in USER_ERRORS)


def worker_tmp(fit_id: str) -> str:
    """The temporary folder of one ``fit``'s workers on this machine (checkpoint staging,
    multiprocessing's sockets): a worker stopped by Ctrl-C or a crash cannot clean up after itself,
    so the driver removes the whole folder when ``fit`` ends, however it ends."""
    return os.path.join(tempfile.gettempdir(), f"cafe-dist-{fit_id}")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    spec: WorkerSpec = config["spec"]
    tempfile.tempdir = worker_tmp(spec.fit_id)
    os.makedirs(tempfile.tempdir, exist_ok=True)
    wc = _context(spec)
    sweep = spec.job.mlflow.run_tags.get("sweep")
    _logging(wc.rank, spec.job.ray.verbose, label=spec.run_name.removeprefix(f"{sweep}-") if sweep else "")
    Trainer(spec, wc).train()
