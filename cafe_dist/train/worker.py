"""What every Ray Train worker runs: build DLRM under DMP, train on its data shard, evaluate."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed as dist
from torch.nn.functional import binary_cross_entropy_with_logits
from torchmetrics.classification import BinaryAUROC
from torchrec.distributed.model_parallel import DistributedModelParallel, get_default_sharders
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from cafe_dist.batching import Collator
from cafe_dist.collectives import all_gather_cat
from cafe_dist.config import JobConfig
from cafe_dist.coordinator import ActorSync
from cafe_dist.data.schema import DatasetMeta
from cafe_dist.data.writer import BadInputError
from cafe_dist.embeddings import FeatureSpec, build_embedding
from cafe_dist.embeddings.table_rows import TableRows
from cafe_dist.model import DLRM
from cafe_dist.tracking import StepLogger
from cafe_dist.train.drift import HotSetProbe
from cafe_dist.train.sharding import make_plan


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    local_world_size: int
    device: torch.device


def _context(job: JobConfig) -> WorkerContext:
    ctx = ray.train.get_context()
    if job.ray.use_gpu:
        device = torch.device("cuda", ctx.get_local_rank())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_world_size(), device)


def build_model(job: JobConfig, meta: DatasetMeta, wc: WorkerContext):
    """DLRM with fused sparse optimizer, sharded by DMP; returns (dmp, dense optimizer, embedding)."""
    torch.manual_seed(job.train.seed)
    features = [FeatureSpec(f, meta.cardinality[f]) for f in meta.sparse_features]
    emb = build_embedding(job.embedding.method, features, job.embedding.dim,
                          job.embedding.compression_ratio, options=job.method_options())
    model = DLRM(emb, len(meta.dense_features), job.model.dense_arch, job.model.over_arch,
                 device=wc.device)
    apply_optimizer_in_backward(RowWiseAdagrad, emb.ebc.parameters(),
                                {"lr": job.train.embedding_lr or job.train.lr})
    plan = make_plan(model, [t.name for t in emb.tables], wc.device, wc.world_size,
                     wc.local_world_size, job.train.batch_size, job.ray.sharding_types)
    dmp = DistributedModelParallel(model, device=wc.device, plan=plan, sharders=get_default_sharders())
    dense_params = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    dense_opt = KeyedOptimizerWrapper(dense_params, lambda ps: torch.optim.Adagrad(ps, lr=job.train.lr))
    rows = TableRows(dmp, dmp.fused_optimizer.state_dict()["state"], dense_opt)
    return dmp, dense_opt, emb, plan, rows


def evaluate(dmp: torch.nn.Module, shard, collate: Collator, device: torch.device,
             batch_size: int) -> dict[str, float]:
    """AUC and logloss over this rank's test shard, reduced across all ranks."""
    dmp.eval()
    auroc = BinaryAUROC().to(device)
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, rows)
    with torch.no_grad():
        for np_batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy",
                                           drop_last=False, prefetch_batches=2):
            try:
                batch = collate(np_batch).to(device)
            except BadInputError as e:
                raise BadInputError(f"test split, rank {dist.get_rank()}: {e}") from None
            logits = dmp(batch.dense, batch.sparse)
            auroc.update(torch.sigmoid(logits), batch.labels.long())
            totals[0] += binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum").double()
            totals[1] += len(batch.labels)
    dist.all_reduce(totals)
    dmp.train()
    if totals[1] == 0:
        return {"auc": float("nan"), "logloss": float("nan"), "eval_rows": 0}
    return {"auc": float(auroc.compute()), "logloss": float(totals[0] / totals[1]),
            "eval_rows": int(totals[1])}


# after_step statistics that are a current level rather than a count to sum, and their output name
LEVELS = {"hot": "hot_ids", "churn": "last_churn"}


def _log_eval(is_chief: bool, tracking: StepLogger | None, step: int, result: dict[str, float]) -> None:
    if tracking:
        tracking.log(step, {"auc": result["auc"], "logloss": result["logloss"]})
    if is_chief:
        print(f"[cafe-dist] eval at step {step}: auc {result['auc']:.4f} logloss {result['logloss']:.4f}",
              flush=True)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    job = JobConfig.model_validate(config["job"])
    meta = DatasetMeta(**config["meta"])
    wc = _context(job)
    dmp, dense_opt, emb, plan, rows = build_model(job, meta, wc)
    if hasattr(emb, "attach_sync") and config.get("coordinator"):
        emb.attach_sync(ActorSync(config["coordinator"], emb.merge_config(wc.world_size)))
    collate = Collator(meta, emb.input_kind)
    train_shard = ray.train.get_dataset_shard("train")
    test_shard = ray.train.get_dataset_shard("test")
    tc = job.train
    is_chief = wc.rank == 0
    probe = HotSetProbe.maybe(config["data_dir"], meta, emb) if is_chief else None
    trace: list[list[float]] = []
    tracking = StepLogger(**config["mlflow"]) if is_chief and config.get("mlflow") else None
    if is_chief:
        print(f"[cafe-dist] world_size={wc.world_size} device={wc.device.type} "
              f"method={job.embedding.method} plan:\n{plan}", flush=True)
    if tracking:
        tracking.log_text(str(plan), "sharding_plan.txt")

    step, samples = 0, 0
    totals: dict[str, float] = {}  # counters summed over steps (promoted, ...); levels (hot, churn) kept
    checksums: list[int] = []  # digest of the hot map / id maps after every step
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    # time in periodic evaluation (not training), the latest (step, result), step that reached target_auc
    eval_s, last_eval, reached = 0.0, None, None
    done = False
    loop_start = time.perf_counter()  # wall time, data loading included: what a user waits for
    for epoch in range(tc.epochs):
        for np_batch in train_shard.iter_batches(batch_size=tc.batch_size, batch_format="numpy",
                                                 drop_last=True, prefetch_batches=2):
            try:
                batch = collate(np_batch).to(wc.device)
            except BadInputError as e:  # say where: this rank's shard, this step's batch
                raise BadInputError(f"train split, rank {wc.rank}, step {step + 1} (rows {step * tc.batch_size:,}"
                                    f"–{(step + 1) * tc.batch_size - 1:,} of this rank's shard): {e}") from None
            logits = dmp(batch.dense, batch.sparse)
            loss = binary_cross_entropy_with_logits(logits, batch.labels)
            dense_opt.zero_grad()
            loss.backward()
            dense_opt.step()
            stats = emb.after_step(rows)  # hot-set changes, evictions: between steps, same on every rank
            for k, val in stats.items():
                totals[k] = val if k in LEVELS else totals.get(k, 0.0) + val
            checksum = emb.state_checksum()
            if checksum is not None:
                checksums.append(checksum % (2**62))
            step += 1
            samples += len(batch.labels) * wc.world_size
            window_loss += float(loss.detach())
            window_steps += 1
            if is_chief and step % tc.log_every == 0:
                now = time.perf_counter()
                rate = window_steps * tc.batch_size * wc.world_size / (now - window_start)
                extra = "".join(f" {k} {v:,.0f}" for k, v in totals.items())
                if probe is not None:  # rows consumed so far = position in the (time-ordered) data
                    trace.append([step, samples, probe(samples)])
                    extra += f" top-ids hot {trace[-1][2]:.2f}"
                print(f"[cafe-dist] epoch {epoch} step {step} loss {window_loss / window_steps:.4f} "
                      f"{rate:,.0f} samples/s{extra}", flush=True)
                if tracking:
                    overhead = getattr(emb, "overhead_s", None)
                    tracking.log(step, {"loss": window_loss / window_steps, "samples_per_sec": rate, **totals,
                                        **({"hot_top_ids": trace[-1][2]} if trace else {}),
                                        **({"sync_overhead": overhead / (now - loop_start - eval_s)}
                                           if overhead is not None else {})})
                window_loss, window_steps, window_start = 0.0, 0, now
            if tc.eval_every is not None and step % tc.eval_every == 0:  # every rank is at this step
                t_eval = time.perf_counter()
                last_eval = (step, evaluate(dmp, test_shard, collate, wc.device, tc.eval_batch_size))
                eval_s += time.perf_counter() - t_eval
                window_start += time.perf_counter() - t_eval
                _log_eval(is_chief, tracking, *last_eval)
                if tc.target_auc is not None and last_eval[1]["auc"] >= tc.target_auc:  # same AUC on every rank
                    reached = step
                    done = True
                    break
            if tc.max_steps is not None and step >= tc.max_steps:
                done = True
                break
        if done:
            break
    train_time = time.perf_counter() - loop_start - eval_s

    if last_eval is not None and last_eval[0] == step:  # the last periodic evaluation was the final one
        result = dict(last_eval[1])
    else:
        result = evaluate(dmp, test_shard, collate, wc.device, tc.eval_batch_size)
        _log_eval(is_chief, tracking, step, result)
    if checksums:  # hot sets / id maps must be identical on every rank after every step
        mine = torch.tensor(checksums, dtype=torch.int64)
        every = all_gather_cat(mine.unsqueeze(0)).view(wc.world_size, -1)
        result["state_consistent_across_ranks"] = bool((every == mine).all())
    if hasattr(emb, "sync_summary"):
        result.update(emb.sync_summary(train_time))
    metrics = {
        **result,
        "steps": step,
        "train_samples": samples,
        "samples_per_sec": samples / train_time if train_time > 0 else 0.0,
        "world_size": wc.world_size,
        **({"target_auc_reached_at_step": reached} if tc.target_auc is not None else {}),
        **{f"{k}_total" if k not in LEVELS else LEVELS[k]: v for k, v in totals.items()},
        **({"hot_top_ids_trace": trace, "true_top_ids_hot": probe.hot_top_keys(samples, 20)} if trace else {}),
        "embedding_bytes": emb.embedding_bytes(),
        "full_embedding_bytes": emb.full_embedding_bytes(),
    }
    if is_chief:
        print(f"[cafe-dist] done: steps {step} auc {metrics['auc']:.4f} logloss {metrics['logloss']:.4f} "
              f"{metrics['samples_per_sec']:,.0f} samples/s", flush=True)
    # Ray Train V2 keeps driver-side metrics only with a checkpoint, so rank 0 attaches a small one.
    if is_chief:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "result.json").write_text(json.dumps(metrics, indent=2))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics)
