"""Device discipline (issue 35): NCCL takes tensors on the rank's GPU only, and a one-GPU run never
calls a collective, so only a test can show that every collective cafe-dist makes puts its tensors
where the process group wants them. Two processes on the ``strict`` backend (tests/strict_backend.py:
NCCL's rule on a ``fakegpu`` device this CPU machine has) run the collectives the trainer's checks,
CAFE's migration reads and hot-row coverage, the evaluator's totals and the checkpointer's broadcast
make, handing over CPU tensors as those callers do."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dmp_helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from tests import strict_backend

    strict_backend.register()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(strict_backend.BACKEND, rank=rank, world_size=world)
    from cafe_dist import collectives
    from cafe_dist.embeddings import FeatureSpec, build_embedding
    from cafe_dist.embeddings.cafe.migration import init_hot_rows
    from cafe_dist.embeddings.table_rows import TableRows

    out: dict = {}
    try:
        dist.all_reduce(torch.ones(2))  # the backend really refuses CPU tensors, as NCCL does
        out["refused"] = False
    except RuntimeError:
        out["refused"] = True
    # the trainer's checks: all-gathers of CPU counters, one row per rank (sizes may differ)
    got = collectives.all_gather_cat(torch.full((rank + 1, 2), rank, dtype=torch.int64))
    out["gathered"], out["gathered_on"] = got.tolist(), str(got.device)
    # the evaluator's totals: an all-reduce in place of a CPU tensor
    totals = torch.tensor([1.5 * (rank + 1), 10.0], dtype=torch.float64)
    out["reduced"] = collectives.all_reduce_sum(totals).tolist()
    out["broadcast"] = collectives.broadcast_object({"newest": f"rank {rank}"})  # the checkpointer's
    collectives.barrier()  # the coordinator's
    # CAFE's migration: a promoted id's hot row read from its hash row (rank 0 holds the unsharded
    # table's rows and the read is an all-reduce), then the hot rows' coverage (an all-reduce)
    torch.manual_seed(0)
    emb = build_embedding("cafe", [FeatureSpec("a", 5), FeatureSpec("b", 9000)], 8, 20,
                          device=torch.device("cpu"), options={"cold": "hash", "sync_interval": 1, "sync_lag": 0})
    rows = TableRows(emb)
    key = emb.key_of("b", [4321])
    init_hot_rows(rows, emb.layout, 8, key, torch.tensor([3]))
    out["hot_row"] = rows.read([(emb.TABLE, emb.hot_row([3]))])[0]
    out["hash_row"] = rows.read([(emb.TABLE, emb.layout.hash_row("b", key))])[0]
    out["coverage"] = emb.memory_use()["hot_slots"]
    out["device"] = str(collectives.group_device())
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_every_collective_runs_on_the_groups_device(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for r in (r0, r1):
        assert r["device"] == "fakegpu:0" and r["refused"]
        assert r["gathered"] == [[0, 0], [1, 1], [1, 1]] and r["gathered_on"] == "cpu"  # back where it came from
        assert r["reduced"] == [4.5, 20.0]
        assert r["broadcast"] == {"newest": "rank 0"}
        assert torch.equal(r["hot_row"], r["hash_row"]) and r["hot_row"].abs().sum() > 0
    assert torch.equal(r0["hot_row"], r1["hot_row"])


def test_no_collective_bypasses_the_one_place_that_places_its_tensors():
    """torch.distributed's collectives are called in cafe_dist/collectives.py alone."""
    call = re.compile(r"\bdist\.(all_reduce|all_gather\w*|broadcast\w*|barrier|reduce\w*|gather\w*|scatter\w*|"
                      r"all_to_all\w*|send|recv)\(")
    bypass = [f"{p.relative_to(ROOT)}:{n}" for p in (ROOT / "cafe_dist").rglob("*.py") if p.name != "collectives.py"
              for n, line in enumerate(p.read_text().splitlines(), 1) if call.search(line)]
    assert not bypass, f"collectives outside cafe_dist/collectives.py: {bypass}"
