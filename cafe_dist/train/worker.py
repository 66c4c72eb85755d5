"""What every Ray Train worker runs: build DLRM under DMP, train on its data shard, evaluate."""

from __future__ import annotations

import json
import os
import random
import signal
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
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
from cafe_dist.checkpoint import dir_name, find_latest, load_rank_files, resize_message, write_rank_files
from cafe_dist.collectives import all_gather_cat
from cafe_dist.config import ConfigError, JobConfig
from cafe_dist.coordinator import ActorSync
from cafe_dist.data import storage
from cafe_dist.data.schema import DatasetMeta
from cafe_dist.embeddings import FeatureSpec, build_embedding
from cafe_dist.embeddings.table_rows import TableRows
from cafe_dist.errors import BadInputError
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


WARMUP_STEPS = 10  # steps left out of steady_samples_per_sec

# after_step statistics that are a current level rather than a count to sum, and their output name
LEVELS = {"hot": "hot_ids", "churn": "last_churn"}


def _log_eval(is_chief: bool, tracking: StepLogger | None, step: int, result: dict[str, float]) -> None:
    if tracking:
        tracking.log(step, {"auc": result["auc"], "logloss": result["logloss"]})
    if is_chief:
        print(f"[cafe-dist] eval at step {step}: auc {result['auc']:.4f} logloss {result['logloss']:.4f}",
              flush=True)


@dataclass
class Progress:
    """Where training stands: saved in every checkpoint, so a resumed run continues exactly here."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of ``epoch`` already trained on (skipped on resume)
    samples: int = 0
    data_digest: int = 0  # CRC32 chained over every batch this rank trained on, in order
    hot_map_digest: int = 0  # chained over the per-step state checksum (hot map / id maps)
    train_time_s: float = 0.0  # in earlier attempts
    totals: dict[str, float] = field(default_factory=dict)  # summed counters; levels (hot, churn) kept
    checksums: list[int] = field(default_factory=list)  # state checksum after every step
    trace: list[list[float]] = field(default_factory=list)


class StepPhases:
    """Where a training step's wall time goes (this rank's view; ``bench throughput`` reports it):
    data (waiting for and collating the batch), lookup (the embedding module's forward: id
    transform, sharded lookups, combine), dense forward, backward (both optimizers included; fused
    tables update in backward) and the method's between-steps work (CAFE: sketch, sync, migration)."""

    def __init__(self, emb: torch.nn.Module) -> None:
        self.emb = emb
        self.mark = time.perf_counter()
        self._lookup_start = 0.0
        self.restart()
        emb.register_forward_pre_hook(self._pre)
        emb.register_forward_hook(self._post)

    def restart(self) -> None:
        """Count from here on (after the warm-up steps, as steady_samples_per_sec does)."""
        self.s = dict.fromkeys(("data", "lookup", "forward", "backward", "method"), 0.0)
        self._method_base = dict(getattr(self.emb, "phase_s", None) or {})

    def _pre(self, module, args) -> None:
        self._lookup_start = time.perf_counter()

    def _post(self, module, args, out) -> None:
        if module.training and torch.is_grad_enabled():
            self.s["lookup"] += time.perf_counter() - self._lookup_start

    def add(self, phase: str) -> None:
        now = time.perf_counter()
        self.s[phase] += now - self.mark
        self.mark = now

    def split(self) -> dict[str, float]:
        """Seconds per phase; the method's share broken down where it says how."""
        out = {k: v for k, v in self.s.items() if k not in ("forward", "method")}
        out["dense_forward"] = self.s["forward"] - self.s["lookup"]
        parts = getattr(self.emb, "phase_s", None)
        out.update({k: v - self._method_base.get(k, 0.0) for k, v in parts.items()} if parts
                   else {"method": self.s["method"]})
        return out


def _batch_crc(np_batch: dict[str, np.ndarray], seed: int) -> int:
    crc = seed
    for name in sorted(np_batch):
        crc = zlib.crc32(np.ascontiguousarray(np_batch[name]).tobytes(), crc)
    return crc


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _dcp_state(dmp, dense_opt) -> dict[str, Any]:
    """What DCP saves and loads in place: sharded tables + fused optimizer state, dense part + its optimizer."""
    return {"model": dmp.state_dict(), "fused_optim": dmp.fused_optimizer.state_dict(),
            "dense_optim": dense_opt.state_dict()}


def _broadcast(obj: Any) -> Any:
    box = [obj]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


class RunMarkers:
    """Files of this run beside its checkpoints: attempt markers (restarts) and fault markers."""

    def __init__(self, run_dir: str, fit_id: str) -> None:
        self.dir, self.fit_id = run_dir, fit_id

    def count_start(self) -> int:
        """Record this start of the worker group; returns how many came before it in this fit."""
        starts = storage.join(self.dir, ".starts")
        before = sum(1 for n in storage.list_dir(starts) if n.startswith(self.fit_id))
        storage.write_bytes(storage.join(starts, f"{self.fit_id}-{before}"), b"")
        return before

    def fire_once(self, fault: str) -> bool:
        """True the first time a fault is due in this run (a marker keeps it from firing again)."""
        marker = storage.join(self.dir, ".faults", fault)
        if storage.is_file(marker):
            return False
        storage.write_bytes(marker, b"")
        return True


def train_loop_per_worker(config: dict[str, Any]) -> None:
    job = JobConfig.model_validate(config["job"])
    meta = DatasetMeta(**config["meta"])
    wc = _context(job)
    dmp, dense_opt, emb, plan, _ = build_model(job, meta, wc)
    tc = job.train
    is_chief = wc.rank == 0
    run = RunMarkers(config["run_dir"], config["fit_id"])
    actor = None
    if config.get("coordinator"):
        from cafe_dist.coordinator import NAMESPACE, actor_name

        actor = ray.get_actor(actor_name(config["coordinator"]), namespace=NAMESPACE)

    # ---- resume from the newest complete checkpoint, if there is one ------------------------
    restarts = run.count_start() if is_chief else 0
    found = _broadcast(find_latest(config["run_dir"]) if is_chief else None)
    progress, coordinator_state, resume_checksum = Progress(), None, None
    if found is not None:
        if found.world_size != wc.world_size:
            raise ConfigError(resize_message(found, wc.world_size))
        local = load_rank_files(found.path, wc.rank, _dcp_state(dmp, dense_opt))
        emb.load_local_state(local["embedding"])
        progress = Progress(**local["progress"])
        _set_rng_state(local["rng"])
        coordinator_state = local.get("coordinator")
        resume_checksum = emb.state_checksum()
        if is_chief:
            print(f"[cafe-dist] resumed from {found.path} (step {found.step}); restarts {restarts}", flush=True)
    rows = TableRows(dmp, dmp.fused_optimizer.state_dict()["state"], dense_opt)  # after loading: live tensors
    if actor is not None:
        if is_chief:  # the coordinator restarts from the checkpointed state, or from nothing
            ray.get(actor.reset.remote(coordinator_state))
        dist.barrier()
        if hasattr(emb, "attach_sync"):
            emb.attach_sync(ActorSync(config["coordinator"], emb.merge_config(wc.world_size)))

    collate = Collator(meta, emb.input_kind)
    train_shard = ray.train.get_dataset_shard("train")
    test_shard = ray.train.get_dataset_shard("test")
    probe = HotSetProbe.maybe(config["data_dir"], meta, emb) if is_chief else None
    tracking = StepLogger(**config["mlflow"]) if is_chief and config.get("mlflow") else None
    if is_chief:
        print(f"[cafe-dist] world_size={wc.world_size} device={wc.device.type} "
              f"method={job.embedding.method} plan:\n{plan}", flush=True)
    if tracking and found is None:
        tracking.log_text(str(plan), "sharding_plan.txt")

    def save_checkpoint(final: bool, metrics: dict[str, Any], result: dict[str, Any] | None = None) -> None:
        """Every rank writes its part and reports it; Ray merges them into one directory."""
        state = not final or (job.checkpoint.at_end and saved_at != progress.step)
        coord = None
        if state and actor is not None and is_chief:  # in-flight rounds merged, nothing else
            coord = ray.get(actor.state_dict.remote(emb.rounds_in_flight()))
        local = {"embedding": emb.local_state(), "progress": asdict(progress), "rng": _rng_state(),
                 **({"coordinator": coord} if coord is not None else {})} if state else None
        with tempfile.TemporaryDirectory() as tmp:
            extra = {"result.json": json.dumps(result, indent=2)} if result is not None and is_chief else {}
            write_rank_files(tmp, wc.rank, wc.world_size, progress.step, _dcp_state(dmp, dense_opt) if state else None,
                             local, extra, info={"mlflow_run_id": (config.get("mlflow") or {}).get("run_id"),
                                                 "run_name": config.get("coordinator"),
                                                 **config.get("resume_key", {})})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=dir_name(progress.step, final))

    def inject_faults() -> None:
        f = job.fault
        if f.kill_coordinator_at_step == progress.step and is_chief and actor is not None \
                and run.fire_once("kill_coordinator"):
            print(f"[cafe-dist] fault: killing the coordinator after step {progress.step}", flush=True)
            ray.kill(actor, no_restart=False)
        if f.kill_worker_at_step == progress.step and wc.rank == wc.world_size - 1 and run.fire_once("kill_worker"):
            print(f"[cafe-dist] fault: killing rank {wc.rank} (pid {os.getpid()}) after step {progress.step}",
                  flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    saved_at = progress.step if found is not None else -1  # step of the newest state checkpoint
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    last_eval, reached = None, None  # the latest (step, result); the step that reached target_auc
    resumed_samples, prior_train_s = progress.samples, progress.train_time_s  # from earlier attempts
    done = tc.max_steps is not None and progress.step >= tc.max_steps
    loop_start = time.perf_counter()  # wall time, data loading included: what a user waits for
    paused_s = 0.0  # evaluations and checkpoints of this attempt: not training time

    def trained_s(now: float) -> float:
        return prior_train_s + now - loop_start - paused_s

    phases = StepPhases(emb)
    first_step, warm = progress.step, None
    for epoch in range(progress.epoch, tc.epochs):
        if done:
            break
        skip = progress.batch_in_epoch if epoch == progress.epoch else 0
        progress.epoch, progress.batch_in_epoch = epoch, 0
        for np_batch in train_shard.iter_batches(batch_size=tc.batch_size, batch_format="numpy",
                                                 drop_last=True, prefetch_batches=2):
            if progress.batch_in_epoch < skip:  # trained on before the checkpoint we resumed from
                progress.batch_in_epoch += 1
                continue
            step = progress.step
            try:
                batch = collate(np_batch).to(wc.device)
            except BadInputError as e:  # say where: this rank's shard, this step's batch
                raise BadInputError(f"train split, rank {wc.rank}, step {step + 1} (rows {step * tc.batch_size:,}"
                                    f"–{(step + 1) * tc.batch_size - 1:,} of this rank's shard): {e}") from None
            phases.add("data")
            logits = dmp(batch.dense, batch.sparse)
            loss = binary_cross_entropy_with_logits(logits, batch.labels)
            phases.add("forward")
            dense_opt.zero_grad()
            loss.backward()
            dense_opt.step()
            phases.add("backward")
            stats = emb.after_step(rows)  # hot-set changes, evictions: between steps, same on every rank
            phases.add("method")
            for k, val in stats.items():
                progress.totals[k] = val if k in LEVELS else progress.totals.get(k, 0.0) + val
            checksum = emb.state_checksum()
            if checksum is not None:
                progress.checksums.append(checksum % (2**62))
                progress.hot_map_digest = zlib.crc32(str(checksum).encode(), progress.hot_map_digest)
            progress.data_digest = _batch_crc(np_batch, progress.data_digest)
            progress.step = step = step + 1
            progress.batch_in_epoch += 1
            progress.samples += len(batch.labels) * wc.world_size
            if step - first_step == WARMUP_STEPS:  # steady state from here: JIT compiles, caches warm
                warm = (time.perf_counter(), paused_s, progress.samples)
                phases.restart()
            window_loss += float(loss.detach())
            window_steps += 1
            if is_chief and step % tc.log_every == 0:
                now = time.perf_counter()
                rate = window_steps * tc.batch_size * wc.world_size / (now - window_start)
                extra = "".join(f" {k} {v:,.0f}" for k, v in progress.totals.items())
                if probe is not None:  # rows consumed so far = position in the (time-ordered) data
                    progress.trace.append([step, progress.samples, probe(progress.samples)])
                    extra += f" top-ids hot {progress.trace[-1][2]:.2f}"
                print(f"[cafe-dist] epoch {epoch} step {step} loss {window_loss / window_steps:.4f} "
                      f"{rate:,.0f} samples/s{extra}", flush=True)
                if tracking:
                    overhead = getattr(emb, "overhead_s", None)
                    tracking.log(step, {"loss": window_loss / window_steps, "samples_per_sec": rate,
                                        **progress.totals,
                                        **({"hot_top_ids": progress.trace[-1][2]} if progress.trace else {}),
                                        **({"sync_overhead": overhead / trained_s(now)}
                                           if overhead is not None else {})})
                window_loss, window_steps, window_start = 0.0, 0, now
            if tc.eval_every is not None and step % tc.eval_every == 0:  # every rank is at this step
                t_eval = time.perf_counter()
                last_eval = (step, evaluate(dmp, test_shard, collate, wc.device, tc.eval_batch_size))
                paused_s += time.perf_counter() - t_eval
                window_start += time.perf_counter() - t_eval
                _log_eval(is_chief, tracking, *last_eval)
                if tc.target_auc is not None and last_eval[1]["auc"] >= tc.target_auc:  # same AUC on every rank
                    reached = step
                    done = True
            if tc.max_steps is not None and step >= tc.max_steps:
                done = True
            every = job.checkpoint.every_steps
            if every is not None and step % every == 0 and not done:
                t_ckpt = time.perf_counter()
                progress.train_time_s = trained_s(t_ckpt)  # so far, saved with the rest
                save_checkpoint(False, {"step": step})
                saved_at = step
                paused_s += time.perf_counter() - t_ckpt
                window_start += time.perf_counter() - t_ckpt
            inject_faults()
            if done:
                break
            phases.mark = time.perf_counter()  # logging, evaluation and checkpoints are not step time
    end = time.perf_counter()
    train_time, attempt_s = trained_s(end), trained_s(end) - prior_train_s
    progress.train_time_s = train_time  # what the final checkpoint records
    steady = ((progress.samples - warm[2]) / (end - warm[0] - (paused_s - warm[1]))
              if warm is not None and progress.samples > warm[2] else None)
    step, samples, totals = progress.step, progress.samples, progress.totals

    if last_eval is not None and last_eval[0] == step:  # the last periodic evaluation was the final one
        result = dict(last_eval[1])
    else:
        result = evaluate(dmp, test_shard, collate, wc.device, tc.eval_batch_size)
        _log_eval(is_chief, tracking, step, result)
    if progress.checksums:  # hot sets / id maps must be identical on every rank after every step
        mine = torch.tensor(progress.checksums, dtype=torch.int64)
        every_rank = all_gather_cat(mine.unsqueeze(0)).view(wc.world_size, -1)
        result["state_consistent_across_ranks"] = bool((every_rank == mine).all())
        result["hot_map_digest"] = progress.hot_map_digest
    if hasattr(emb, "sync_summary"):
        result.update(emb.sync_summary(train_time))
    if probe is not None:  # synthetic data: the coverage a perfect hot set would have
        result["oracle_coverage"] = probe.oracle_coverage()
    if actor is not None:
        result["coordinator_restarted"] = bool(ray.get(actor.was_restarted.remote()))
    digests = all_gather_cat(torch.tensor([[progress.data_digest]], dtype=torch.int64)).view(-1).tolist()
    metrics = {
        **result,
        "steps": step,
        "train_samples": samples,
        "samples_per_sec": (samples - resumed_samples) / attempt_s if attempt_s > 0 else 0.0,  # this attempt
        "steady_samples_per_sec": steady,  # after the first WARMUP_STEPS of this attempt
        "world_size": wc.world_size,
        "restarts": restarts,
        "resumed_from_step": found.step if found is not None else None,
        "resumed_hot_map_checksum": resume_checksum,
        "time_split_s": phases.split(),  # steady state too, where the run had more than WARMUP_STEPS
        "data_digest": digests,
        **({"target_auc_reached_at_step": reached} if tc.target_auc is not None else {}),
        **{f"{k}_total" if k not in LEVELS else LEVELS[k]: v for k, v in totals.items()},
        **({"hot_top_ids_trace": progress.trace, "true_top_ids_hot": probe.hot_top_keys(samples, 20)}
           if progress.trace else {}),
        "embedding_bytes": emb.embedding_bytes(),
        "full_embedding_bytes": emb.full_embedding_bytes(),
    }
    if is_chief:
        print(f"[cafe-dist] done: steps {step} auc {metrics['auc']:.4f} logloss {metrics['logloss']:.4f} "
              f"{metrics['samples_per_sec']:,.0f} samples/s", flush=True)
    # Ray Train V2 keeps driver-side metrics only with a checkpoint: the final one carries result.json
    # (and the full state when checkpoint.at_end and the last periodic one is older).
    save_checkpoint(True, metrics, result=metrics)
