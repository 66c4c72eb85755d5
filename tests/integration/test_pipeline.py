"""TorchRec's train pipeline (``TrainPipelineSparseDist``), wired as GPU workers use it, run on two CPU
processes (gloo, table-wise shards): it must pipeline the sharded tables and the id transform (a
batch remapped before the previous step's between-steps work) and train exactly as the plain loop:
the same losses, evaluations (taken between steps, pipeline paused) and hot maps. CAFE learns a
hot-set version after every step here, so every step has a map switch and a row migration to order."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dmp_helpers import free_port, init

STEPS, EVAL_AT, BATCH = 12, 6, 64
FEATURES = [("a", 6), ("b", 5000), ("c", 20000), ("d", 40)]
OPTIONS = {"cafe": {"cold": "hash", "sync_interval": 1, "sync_lag": 0, "admission": "threshold",
                    "threshold": 3.0, "importance": "freq"},
           "robe": None}


class _Phases:
    pipelined = False

    def add(self, _phase: str) -> None:
        pass


def _batches(rank: int, n: int):
    """Rank ``rank``'s batches: skewed ids (some hot), 3 dense features, labels tied to them."""
    from cafe_dist.batching import Batch, one_id_per_feature

    rng = np.random.default_rng(100 + rank)
    out = []
    for _ in range(n):
        ids = np.stack([np.minimum(rng.zipf(1.3, BATCH), card) - 1 for _, card in FEATURES]).astype(np.int64)
        dense = rng.normal(size=(BATCH, 3)).astype(np.float32)
        labels = ((ids[3] % 3 == 0) ^ (dense[:, 0] > 1)).astype(np.float32)
        out.append(Batch(torch.from_numpy(dense), one_id_per_feature([f for f, _ in FEATURES], ids),
                         torch.from_numpy(labels)))
    return out


def _model(method: str, world: int):
    from cafe_dist.config import load_config
    from cafe_dist.embeddings import FeatureSpec, build_embedding
    from cafe_dist.model import DLRM
    from cafe_dist.train.trainer import WorkerContext, shard_model

    torch.manual_seed(0)
    emb = build_embedding(method, [FeatureSpec(f, c) for f, c in FEATURES], 8, 20, device=torch.device("meta"),
                          options=OPTIONS[method])
    emb.set_known_values({f.name: np.arange(f.cardinality - 1) for f in emb.features if f.name in emb.full_names()})
    job = load_config(None, ["data.path=unused", "train.lr=0.05", f"train.batch_size={BATCH}"])
    return shard_model(DLRM(emb, 3, [16], [16]), job, WorkerContext(dist.get_rank(), world, world, torch.device("cpu")))


def _evaluate(model, batches) -> torch.Tensor:
    model.dmp.eval()
    with torch.no_grad():
        out = torch.cat([model.dmp(b.dense, b.sparse) for b in batches])
    model.dmp.train()
    return out


def _plain(method: str, world: int, batches, held_out) -> dict:
    from torch.nn.functional import binary_cross_entropy_with_logits


    model = _model(method, world)
    rows = model.rows()
    out: dict = {"loss": [], "checksum": []}
    for step, b in enumerate(batches, 1):
        loss = binary_cross_entropy_with_logits(model.dmp(b.dense, b.sparse), b.labels)
        model.dense_opt.zero_grad()
        loss.backward()
        model.dense_opt.step()
        model.emb.after_step(rows)
        out["loss"].append(float(loss.detach()))
        out["checksum"].append(model.emb.state_checksum())
        if step == EVAL_AT:
            out["eval"] = _evaluate(model, held_out)
    out["final"] = _evaluate(model, held_out)
    return out


def _pipelined(method: str, world: int, batches, held_out) -> dict:
    from cafe_dist.train.feed import Fed
    from cafe_dist.train.pipeline import PipelinedSteps

    model = _model(method, world)
    emb, rows = model.emb, model.rows()
    events: list[tuple[str, int]] = []  # what ran in which order: remaps (batch number), between-steps work
    remap, after = emb.before_remap, emb.after_step

    def before_remap(index):
        events.append(("remap", index))
        remap(index)

    def after_step(r):
        events.append(("after", len([e for e in events if e[0] == "after"]) + 1))
        return after(r)

    emb.before_remap, emb.after_step = before_remap, after_step
    steps = PipelinedSteps(model.dmp, model.dense_opt, torch.device("cpu"), emb)
    out: dict = {"loss": [], "checksum": []}
    fed = (Fed([], b) for b in batches)
    for step, (_, loss, _stats) in enumerate(steps.steps(fed, 1, lambda f, _: f.batch, rows, _Phases()), 1):
        out["loss"].append(float(loss))
        out["checksum"].append(emb.state_checksum())
        if step == 2:
            p = steps.pipeline
            out["pipelined_modules"] = [type(m).__name__ for m in p._pipelined_modules]
            out["pipelined_postprocs"] = [pp.fqn for pp in p._pipelined_postprocs]
        if step == EVAL_AT:
            with steps.paused():
                out["eval"] = _evaluate(model, held_out)
    with steps.paused():
        out["final"] = _evaluate(model, held_out)
    out["events"] = events
    return out


def _worker(rank: int, world: int, port: int, method: str, out_dir: str) -> None:
    init(rank, world, port)
    batches, held_out = _batches(rank, STEPS), _batches(rank + 10, 2)
    result = {"plain": _plain(method, world, batches, held_out),
              "pipelined": _pipelined(method, world, batches, held_out)}
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("method", ["cafe", "robe"])
def test_the_pipeline_trains_exactly_as_the_plain_loop(tmp_path, method):
    mp.spawn(_worker, args=(2, free_port(), method, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        r = torch.load(tmp_path / f"rank{rank}.pt")
        plain, piped = r["plain"], r["pipelined"]
        # the sharded tables are pipelined, and the id transform runs as the pipeline's postproc
        assert piped["pipelined_modules"] == ["ShardedEmbeddingBagCollection"]
        assert piped["pipelined_postprocs"] == ["embedding.remap_stage"]
        remaps = [i for kind, i in piped["events"] if kind == "remap"]
        assert remaps == list(range(1, STEPS + 1))  # every training batch once, by number
        order = piped["events"]
        for t in range(1, STEPS):  # batch t+1 is remapped before step t's between-steps work
            assert order.index(("remap", t + 1)) < order.index(("after", t)), order
        # ... and trains exactly as the plain loop
        assert np.allclose(piped["loss"], plain["loss"], rtol=1e-5, atol=1e-6), (piped["loss"], plain["loss"])
        assert torch.allclose(piped["eval"], plain["eval"], atol=1e-5)
        assert torch.allclose(piped["final"], plain["final"], atol=1e-5)
        assert piped["checksum"] == plain["checksum"]
        if method == "cafe":  # the hot map changed along the way, so the schedule was exercised
            assert len(set(plain["checksum"])) > 3, plain["checksum"]
