"""What every Ray Train worker runs: its logging, its place in the group, and the :class:`Trainer`."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

import ray.train
import torch

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


def _logging(rank: int, verbose: bool) -> None:
    """One line per event, from rank 0; another rank speaks only with a warning (a fault, an error).
    Ray forwards the worker's stdout to the driver's console. Unless ``verbose``, the libraries'
    INFO logs (fbgemm's loads and TBE settings, TorchRec's planner tables: they reach Ray Train's
    root handler) and their warnings stay out."""
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
    handler.setFormatter(logging.Formatter("[cafe-dist] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False


def train_loop_per_worker(config: dict[str, Any]) -> None:
    spec: WorkerSpec = config["spec"]
    wc = _context(spec)
    _logging(wc.rank, spec.job.ray.verbose)
    Trainer(spec, wc).train()
