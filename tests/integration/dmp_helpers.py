"""Helpers for tests that run real DMP in spawned gloo processes, and real servers on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request

import torch
import torch.distributed as dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)


class EmbeddingOnly(torch.nn.Module):
    """Just the compressed embedding (what DMP shards), without the DLRM around it."""

    def __init__(self, emb: torch.nn.Module) -> None:
        super().__init__()
        self.emb = emb

    def forward(self, kjt):
        return self.emb(kjt)


def shard(emb, world: int, sharding: str | None = None):
    """(DMP-wrapped model, TableRows, plan, dense optimizer) with fused row-wise Adagrad for sharded
    tables and Adagrad for everything else (data-parallel tables), as the training worker builds it."""
    from torchrec.distributed.model_parallel import DistributedModelParallel, get_default_sharders
    from torchrec.optim import RowWiseAdagrad
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from cafe_dist.embeddings.table_rows import TableRows
    from cafe_dist.train.sharding import make_plan

    model = EmbeddingOnly(emb)
    apply_optimizer_in_backward(RowWiseAdagrad, emb.ebc.parameters(), {"lr": 0.1})
    plan = make_plan(model, [t.name for t in emb.tables], torch.device("cpu"), world, world, 8,
                     [sharding] if sharding else None)
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan, sharders=get_default_sharders())
    params = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    dense = KeyedOptimizerWrapper(params, lambda ps: torch.optim.Adagrad(ps, lr=0.1)) if params else None
    return dmp, TableRows(dmp, dmp.fused_optimizer.state_dict()["state"], dense), plan, dense


@contextlib.contextmanager
def http_service(args: list[str], ready_url: str, timeout_s: float = 120, env: dict | None = None):
    """Start a server process (own session), wait until ``ready_url`` answers 200, stop it after."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{' '.join(args[:3])} did not come up: {proc.stderr.read().decode()[-3000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
