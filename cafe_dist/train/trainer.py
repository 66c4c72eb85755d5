"""The training loop of one worker, over components that each own one job: the model and its
optimizers (``build_model``), checkpoints (:class:`Checkpointer`), measurements (:class:`Metrics`),
evaluation (:class:`Evaluator`) and injected faults (:class:`FaultInjector`). The same code runs
for 1 or N workers."""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.functional import binary_cross_entropy_with_logits
from torchrec.distributed.model_parallel import DistributedModelParallel, get_default_sharders
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from cafe_dist.batching import Collator
from cafe_dist.collectives import all_gather_cat
from cafe_dist.config import JobConfig
from cafe_dist.data.reader import RowReader
from cafe_dist.embeddings import CompressedEmbedding
from cafe_dist.embeddings.service import CHECKPOINT_PART
from cafe_dist.embeddings.table_rows import TableRows
from cafe_dist.errors import BadInputError, DivergedError
from cafe_dist.result import FINAL
from cafe_dist.train import elastic
from cafe_dist.train.checkpointer import Checkpointer, Part, Progress, progress_part, rng_part
from cafe_dist.train.drift import HotSetProbe
from cafe_dist.train.evaluator import Evaluator
from cafe_dist.train.faults import FaultInjector, RunMarkers
from cafe_dist.train.feed import Fed, Feed
from cafe_dist.train.metrics import ConsoleSink, Metrics, MlflowSink, Sink
from cafe_dist.train.pipeline import PipelinedSteps
from cafe_dist.train.row_order import Deal, unit_rows
from cafe_dist.train.sharding import make_plan
from cafe_dist.train.spec import WorkerSpec

log = logging.getLogger("cafe_dist.train")


@dataclass(frozen=True)
class WorkerContext:
    rank: int
    world_size: int
    local_world_size: int
    device: torch.device


@dataclass(frozen=True)
class Model:
    """DLRM under DMP with its two optimizers: the fused sparse one (inside backward) and the dense one."""

    dmp: DistributedModelParallel
    dense_opt: KeyedOptimizerWrapper
    emb: CompressedEmbedding
    plan: Any

    def dcp_state(self) -> dict[str, Any]:
        """What DCP saves and loads in place: sharded tables + fused optimizer state, dense part + its optimizer."""
        return {"model": self.dmp.state_dict(), "fused_optim": self.dmp.fused_optimizer.state_dict(),
                "dense_optim": self.dense_opt.state_dict()}

    def rows(self) -> TableRows:
        """Row access across shards; build it after loading a checkpoint (it holds the live tensors)."""
        return TableRows(self.dmp, self.dmp.fused_optimizer.state_dict()["state"], self.dense_opt)


def build_model(spec: WorkerSpec, wc: WorkerContext) -> Model:
    return shard_model(spec.model.build(spec.meta, wc.device, tables_on_host=True), spec.job, wc)


def shard_model(model: torch.nn.Module, job: JobConfig, wc: WorkerContext) -> Model:
    """``model`` (its tables not yet placed) under DMP, with the fused sparse optimizer and the dense one."""
    emb = model.embedding
    apply_optimizer_in_backward(RowWiseAdagrad, emb.ebc.parameters(), {"lr": job.train.embedding_lr or job.train.lr})
    plan = make_plan(model, [t.name for t in emb.tables], wc.device, wc.world_size,
                     wc.local_world_size, job.train.batch_size, job.ray.sharding_types)
    dmp = DistributedModelParallel(model, device=wc.device, plan=plan, sharders=get_default_sharders())
    dense_params = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    dense_opt = KeyedOptimizerWrapper(dense_params, lambda ps: torch.optim.Adagrad(ps, lr=job.train.lr))
    return Model(dmp, dense_opt, emb, plan)


def model_info(spec: WorkerSpec) -> dict[str, Any]:
    """What rebuilds this model without Ray or DMP (``cafe-dist export``): kept in every manifest."""
    return {**spec.model.to_json(), "data_dir": spec.data_dir}


@dataclass(frozen=True)
class StepOutput:
    loss: torch.Tensor
    rows: int  # samples this rank trained on
    stats: dict[str, float]  # the method's between-steps statistics (hot-set changes, evictions)


def _plan_summary(plan: Any) -> str:
    """One line for the console (the whole plan is the run's MLflow artifact sharding_plan.txt)."""
    kinds: dict[str, int] = {}
    per_rank: dict[int, int] = {}
    for tables in plan.plan.values():
        for ps in tables.values():
            kinds[ps.sharding_type] = kinds.get(ps.sharding_type, 0) + 1
            for r in ps.ranks or ():
                per_rank[r] = per_rank.get(r, 0) + 1
    return (", ".join(f"{n} table(s) {k}" for k, n in sorted(kinds.items())) + "; per rank: "
            + " ".join(f"{r}:{n}" for r, n in sorted(per_rank.items())))


@dataclass(frozen=True)
class _Run:
    """What :meth:`Trainer._start` sets up for one attempt of the run."""

    found: Any  # the checkpoint resumed from (cafe_dist.checkpoint_dirs.Found), or None
    restarts: int
    resume_checksum: int | None
    rows: TableRows
    evaluator: Evaluator
    metrics: Metrics
    probe: HotSetProbe | None


def peak_memory() -> dict[str, Any]:
    """The most resident memory each worker's process has held (its peak RSS), every rank's and the
    largest: what a worker needs beside the embedding bytes (tables, sketch, dense model, buffers).
    Every rank must call it (an all-gather)."""
    import resource

    mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    every = all_gather_cat(torch.tensor([mine], dtype=torch.int64)).tolist()
    return {"peak_rss_bytes": max(every), "peak_rss_bytes_per_worker": every}


class Trainer:
    def __init__(self, spec: WorkerSpec, wc: WorkerContext) -> None:
        self.started = time.perf_counter()  # time to the first step (a resumed run's includes its seek) counts from here
        self.first_step_s: float | None = None
        self.spec, self.wc, self.job = spec, wc, spec.job
        self.chief = wc.rank == 0
        self.model = build_model(spec, wc)
        emb = self.model.emb
        # the method's own process beside the workers (CAFE's coordinator), reached through its contract
        self.service = spec.method.service.attach(spec.run_name, wc.rank, wc.world_size) if spec.service else None
        self.progress = Progress()
        parts = {"embedding": Part(emb.local_state, emb.load_local_state), "progress": progress_part(self.progress),
                 "rng": rng_part()}
        if self.service is not None:
            parts[CHECKPOINT_PART] = Part(lambda: self.service.snapshot(emb), self.service.restore)
        self.elastic = spec.job.ray.elastic
        self.checkpointer = Checkpointer(
            spec.run_dir, wc.rank, wc.world_size, self.model.dcp_state, parts,
            every_steps=spec.job.checkpoint.every_steps, at_end=spec.job.checkpoint.at_end,
            info={"mlflow_run_id": spec.mlflow.run_id if spec.mlflow else None, "run_name": spec.run_name,
                  **spec.resume_key, "model": model_info(spec), "elastic": self.elastic},
            reshard=(lambda states: elastic.merge_states(states, wc.rank, wc.world_size, emb)) if self.elastic else None)
        self.markers = RunMarkers(spec.run_dir, spec.fit_id)
        self.faults = FaultInjector(spec.job.fault, self.markers, wc.rank, wc.world_size, self.service)
        self.collate = Collator(spec.meta)
        self.batch_size = spec.job.train.batch_size  # rows per worker per step (an elastic resume may change it)
        self.pipeline = self._pipeline()

    def _pipeline(self) -> PipelinedSteps | None:
        """TorchRec's train pipeline where it helps (GPU workers) and the method allows it."""
        want, emb = self.job.train.pipeline, self.model.emb
        if want == "off" or (want == "auto" and self.wc.device.type != "cuda"):
            return None
        if not emb.pipelineable:
            if self.chief:
                log.info("%s trains in the plain loop: its id map learns from each batch as it remaps it, so "
                         "a batch cannot be remapped ahead (train.pipeline)", self.job.embedding.method)
            return None
        if self.chief:
            log.info("training through TorchRec's TrainPipelineSparseDist: the next batch's id transform and input "
                     "all-to-all overlap each step")
        return PipelinedSteps(self.model.dmp, self.model.dense_opt, self.wc.device, emb)

    # ---- one step --------------------------------------------------------------------------------
    def train_step(self, batch, rows: TableRows, phases=None) -> StepOutput:
        """Forward, loss, backward (the fused optimizer updates the tables in it), the dense
        optimizer, then the method's between-steps work; ``phases`` (a StepPhases) times each part."""
        mark = phases.add if phases is not None else (lambda _: None)
        logits = self.model.dmp(batch.dense, batch.sparse)
        loss = binary_cross_entropy_with_logits(logits, batch.labels)
        mark("forward")
        self.model.dense_opt.zero_grad()
        loss.backward()
        self.model.dense_opt.step()
        mark("backward")
        stats = self.model.emb.after_step(rows)  # hot-set changes, evictions: between steps, same on every rank
        mark("method")
        return StepOutput(loss, len(batch.labels), stats)

    def _record(self, out: StepOutput, fed: Fed) -> None:
        p, emb = self.progress, self.model.emb
        p.rows_digest = (p.rows_digest + fed.digest) & elastic.MASK  # the epoch rows this rank trained on
        p.epoch_rows += self.wc.world_size * self.batch_size  # ... and every rank's
        p.segment_steps += 1
        for k, val in out.stats.items():
            p.totals[k] = val if k in emb.level_stats else p.totals.get(k, 0.0) + val
        checksum = emb.state_checksum()
        if checksum is not None:
            p.checksums.append(checksum % (2**62))
            p.hot_map_digest = zlib.crc32(str(checksum).encode(), p.hot_map_digest)
        p.data_digest = zlib.crc32(fed.crc.to_bytes(4, "little"), p.data_digest)
        p.step += 1
        p.batch_in_epoch += 1
        p.samples += out.rows * self.wc.world_size

    def _checked(self, fed: Fed, step: int):
        """The fed batch of step ``step``, or its error, saying where."""
        if fed.error is None:
            return fed.batch
        p = self.progress  # say where: the batch's rows of the train split
        where = ", ".join(f"{a:,}–{b - 1:,}" for a, b in fed.rows)
        raise BadInputError(f"train split, rank {self.wc.rank}, epoch {p.epoch + 1}, step {step} "
                            f"(rows {where} of the split; below, the row within the batch): "
                            f"{fed.error}") from None

    # ---- the run ---------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Resume, then step through the epochs (evaluating, checkpointing and injecting faults when
        due), then evaluate, report and write the final checkpoint."""
        tc, p = self.job.train, self.progress
        run = self._start()
        evaluator, metrics, phases = run.evaluator, run.metrics, run.metrics.phases
        done = tc.max_steps is not None and p.step >= tc.max_steps
        for epoch in range(p.epoch, tc.epochs):
            if done:
                break
            if epoch != p.epoch or p.segment_world == 0:  # a new epoch (a resumed one goes on: _start)
                self._new_epoch(epoch)
            with self._feed() as feed:
                for fed, out in self._steps(feed, run.rows, phases):
                    self._record(out, fed)
                    if self.first_step_s is None:
                        self.first_step_s = time.perf_counter() - self.started
                    metrics.step_done(epoch, out.loss)
                    self._check_finite(out.loss)
                    if evaluator.due(p.step):  # every rank is at this step
                        started = time.perf_counter()
                        with self._between_steps():
                            metrics.evaluation(p.step, evaluator.run(p.step))
                        metrics.pause(started)
                        done = done or evaluator.target_reached  # the same AUC on every rank
                    if tc.max_steps is not None and p.step >= tc.max_steps:
                        done = True
                    if self.checkpointer.due(p.step) and not done:
                        started = time.perf_counter()
                        p.train_time_s = metrics.trained_s(started)  # so far, saved with the rest
                        self.checkpointer.save(p.step, {"step": p.step})
                        metrics.pause(started)
                    self.faults.after_step(p.step)
                    if done:
                        break
                    phases.mark = time.perf_counter()  # logging, evaluation and checkpoints are not step time
        return self._finish(run)

    def _steps(self, feed: Feed, rows: TableRows, phases) -> Iterator[tuple[Fed, StepOutput]]:
        """Train on each fed batch: (fed, what the step gave), in the plain loop or the pipeline."""
        first = self.progress.step + 1
        if self.pipeline is None:
            for k, fed in enumerate(feed):
                batch = self._checked(fed, first + k)
                phases.add("data")
                yield fed, self.train_step(batch, rows, phases)
            return
        for fed, loss, stats in self.pipeline.steps(feed, first, self._checked, rows, phases):
            yield fed, StepOutput(loss, len(fed.batch.labels), stats)

    def _between_steps(self) -> contextlib.AbstractContextManager:
        """The model as written, for work between steps that runs it (evaluations)."""
        return self.pipeline.paused() if self.pipeline is not None else contextlib.nullcontext()

    def _check_finite(self, loss: torch.Tensor) -> None:
        """A non-finite loss means non-finite weights from here on: stop before anything is saved
        (the checkpoint below, the final one, the logged model). ``loss`` was synced by the metrics."""
        if bool(torch.isfinite(loss.detach()).all()):
            return
        p, tc = self.progress, self.job.train
        raise DivergedError(
            f"training diverged: the loss is {float(loss.detach()):g} at step {p.step} (rank {self.wc.rank}, epoch "
            f"{p.epoch + 1}), so the weights are no longer finite numbers; the run stops here and saves nothing "
            f"from this point. Lower train.lr ({tc.lr:g}) or train.embedding_lr ({tc.embedding_lr or tc.lr:g}), "
            "or look for extreme dense values in the data")

    # ---- the data position (cafe_dist.train.row_order) --------------------------------------------
    def _deal(self) -> Deal:
        p = self.progress
        return Deal(tuple((a, b) for a, b in p.segment), p.segment_world, p.segment_batch, p.segment_unit)

    def _set_segment(self, deal: Deal) -> None:
        p = self.progress
        p.segment, p.segment_world, p.segment_batch, p.segment_unit = ([list(i) for i in deal.intervals], deal.world,
                                                                       deal.batch, deal.unit)
        p.segment_steps = 0

    def _new_epoch(self, epoch: int) -> None:
        p, split = self.progress, self.spec.splits["train"]
        p.epoch, p.batch_in_epoch, p.epoch_rows, p.rows_digest = epoch, 0, 0, 0
        self._set_segment(Deal.epoch(split.rows, self.wc.world_size, self.batch_size, split.row_group_rows))

    def _resume_segment(self) -> None:
        """After loading a checkpoint: go on with its segment of the epoch when the deal is the same
        (same workers, batch and unit: every rank seeks to its next batch), else deal the rows it had
        not trained to this run's workers (an elastic resize, another ``train.batch_size``)."""
        p, split, world = self.progress, self.spec.splits["train"], self.wc.world_size
        unit = unit_rows(self.batch_size, split.row_group_rows)
        if p.segment_world == 0:  # a checkpoint from before row-addressed reads: the epoch's first rows were trained
            start = p.epoch_rows or p.batch_in_epoch * world * self.batch_size
            self._set_segment(Deal(((start, split.rows),) if start < split.rows else (), world, self.batch_size,
                                   unit))
            return
        if (p.segment_world, p.segment_batch, p.segment_unit) == (world, self.batch_size, unit):
            return
        left = self._deal().remaining(p.segment_steps)
        self._set_segment(Deal(left, world, self.batch_size, unit))
        if self.chief:
            log.info("the %s rows of epoch %d not yet trained are dealt to %d worker(s) of %d rows a step",
                     f"{sum(b - a for a, b in left):,}", p.epoch + 1, world, self.batch_size)

    def _feed(self) -> Feed:
        """This rank's batches of the segment from its next step, read ahead in the background (and
        copied to the device, unless TorchRec's pipeline copies them on its own stream)."""
        deal, rank, done = self._deal(), self.wc.rank, self.progress.segment_steps
        reader = RowReader(self.spec.splits["train"], self.collate.columns)
        plan = (deal.rows_of(rank, k) for k in range(done, deal.steps()))
        if self.pipeline is not None:
            return Feed(reader, self.collate, torch.device("cpu"), plan, pin=self.wc.device.type == "cuda")
        return Feed(reader, self.collate, self.wc.device, plan)

    def _start(self) -> _Run:
        """Resume from the newest checkpoint (if any) and its data position, join the method's run
        service, set up the evaluator and the metrics."""
        spec, wc, tc = self.spec, self.wc, self.job.train
        restarts = self.markers.count_start() if self.chief else 0
        found = self.checkpointer.resume()
        resume_checksum = self.model.emb.state_checksum() if found is not None else None
        if found is not None:
            log.info("resumed from %s (step %d); restarts %d", found.path, found.step, restarts)
        rows = self.model.rows()  # after loading: live tensors
        if self.service is not None:  # restarted from the restored state, every rank joins
            self.service.join(self.model.emb)
        evaluator = Evaluator(self.model.dmp, spec.splits["test"], self.collate, wc.device,
                              tc.eval_batch_size, tc.eval_every, tc.target_auc)
        probe = HotSetProbe.maybe(spec.data_dir, spec.meta, self.model.emb) if self.chief else None
        sinks: list[Sink] = [ConsoleSink()]
        if self.chief and spec.mlflow is not None:
            from cafe_dist.tracking import StepLogger

            tracking = StepLogger(spec.mlflow.uri, spec.mlflow.run_id)
            sinks.append(MlflowSink(tracking))
            if found is None:
                tracking.log_text(str(self.model.plan), "sharding_plan.txt")
        log.info("%s on %d worker(s) (%s): %s", self.job.embedding.method, wc.world_size, wc.device.type,
                 _plan_summary(self.model.plan))
        log.debug("sharding plan:\n%s", self.model.plan)
        if self.elastic:
            self.batch_size = self._elastic_batch_size()
        split, bs, p = spec.splits["train"], self.batch_size, self.progress
        per_epoch = Deal.epoch(split.rows, wc.world_size, bs, split.row_group_rows).steps()
        total = per_epoch * tc.epochs
        if found is not None:  # the checkpoint's steps, the rest of its epoch, then whole epochs
            self._resume_segment()
            total = (p.step + self._deal().steps() - p.segment_steps + per_epoch * max(tc.epochs - p.epoch - 1, 0))
        total = min(s for s in (total, tc.max_steps) if s is not None)
        metrics = Metrics(self.model.emb, self.progress, chief=self.chief, rows_per_step=bs * wc.world_size,
                          log_every=tc.log_every, sinks=sinks, total_steps=total or None, probe=probe)
        return _Run(found, restarts, resume_checksum, rows, evaluator, metrics, probe)

    def _elastic_batch_size(self) -> int:
        """Rows per worker per step in an elastic run: with ``ray.elastic_batch: global`` (default)
        the run keeps the rows per step over all workers it started with (cafe_dist.train.elastic);
        a first start, ``per_worker``, or a changed ``train.batch_size`` (``--resume force``) sets
        them anew from ``train.batch_size``."""
        p, configured, world = self.progress, self.job.train.batch_size, self.wc.world_size
        if self.job.ray.elastic_batch == "global" and p.global_batch and p.global_batch_from == configured:
            bs = elastic.per_worker_batch(p.global_batch, world)
            if bs != configured and self.chief:
                log.info("elastic resume on %d worker(s): %d rows per worker per step keep the run's %d per step "
                         "(train.batch_size %d; ray.elastic_batch=per_worker keeps that instead)",
                         world, bs, p.global_batch, configured)
            return bs
        p.global_batch, p.global_batch_from = configured * world, configured
        return configured

    def _finish(self, run: _Run) -> dict[str, Any]:
        """The final evaluation and result (every rank: some figures are reduced), reported with the
        final checkpoint."""
        wc, p, emb = self.wc, self.progress, self.model.emb
        end = time.perf_counter()
        p.train_time_s = run.metrics.trained_s(end)  # what the final checkpoint records
        with self._between_steps():
            result, fresh = run.evaluator.final(p.step)
        if result.get("eval_rows") and not np.isfinite(result["logloss"]):  # the weights went non-finite without a non-finite loss
            raise DivergedError(f"training diverged: the test logloss after step {p.step} is {result['logloss']:g}; "
                                "the model is not saved or logged. Lower train.lr or train.embedding_lr")
        if fresh:
            run.metrics.evaluation(p.step, result)
        result = {**result, **self._run_figures(run.probe)}
        speed = run.metrics.summary(end)
        out = {
            **result,
            "steps": p.step,
            "train_samples": p.samples,
            "samples_per_sec": speed["samples_per_sec"],  # this attempt
            "steady_samples_per_sec": speed["steady_samples_per_sec"],
            "world_size": wc.world_size,
            "pipelined": self.pipeline is not None,  # through TorchRec's train pipeline (train.pipeline)
            "restarts": run.restarts,
            "resumed_from_step": run.found.step if run.found is not None else None,
            "resumed_hot_map_checksum": run.resume_checksum,
            "time_split_s": speed["time_split_s"],
            "first_step_s": self.first_step_s,  # this attempt: from the worker's start (model, resume, first batch)
            "data_digest": all_gather_cat(torch.tensor([[p.data_digest]], dtype=torch.int64)).view(-1).tolist(),
            **(self._elastic_figures() if self.elastic else {}),
            **({"target_auc_reached_at_step": run.evaluator.reached_at} if self.job.train.target_auc is not None
               else {}),
            **{emb.level_stats.get(k, f"{k}_total"): v for k, v in p.totals.items()},
            **({"hot_top_ids_trace": p.trace, "true_top_ids_hot": run.probe.hot_top_keys(p.samples, 20)}
               if p.trace else {}),
            "embedding_bytes": emb.embedding_bytes(),
            "full_embedding_bytes": emb.full_embedding_bytes(),
            **peak_memory(),
            FINAL: True,
        }
        log.info("done: steps %d auc %.4f logloss %.4f %s samples/s", p.step, out["auc"], out["logloss"],
                 f"{out['samples_per_sec']:,.0f}")
        # Ray Train V2 keeps driver-side metrics only with a checkpoint: the final one carries result.json
        # (and the full state when checkpoint.at_end and the last periodic one is older).
        self.checkpointer.save(p.step, out, final=True, result=out)
        return out

    def _elastic_figures(self) -> dict[str, Any]:
        """The data position and the rows digest summed over ranks (cafe_dist.train.elastic)."""
        p = self.progress
        halves = torch.tensor([[p.rows_digest & 0xFFFFFFFF, p.rows_digest >> 32]], dtype=torch.int64)
        total = sum(int(lo) + (int(hi) << 32) for lo, hi in all_gather_cat(halves).tolist()) & elastic.MASK
        return {"elastic": True, "epoch_rows_trained": p.epoch_rows, "batch_size_per_worker": self.batch_size,
                "rows_digest": str(total)}

    def _run_figures(self, probe: HotSetProbe | None) -> dict[str, Any]:
        """What the run's result says beyond AUC: state consistency across ranks, the method's own
        figures, the oracle's coverage (synthetic data) and whether the coordinator restarted."""
        p, emb, out = self.progress, self.model.emb, {}
        if p.checksums:  # hot sets / id maps must be identical on every rank after every step
            mine = torch.tensor(p.checksums, dtype=torch.int64)
            every_rank = all_gather_cat(mine.unsqueeze(0)).view(self.wc.world_size, -1)
            out["state_consistent_across_ranks"] = bool((every_rank == mine).all())
            out["hot_map_digest"] = p.hot_map_digest
        out.update(emb.sync_summary(p.train_time_s))
        if probe is not None:  # synthetic data: the coverage a perfect hot set would have
            out["oracle_coverage"] = probe.oracle_coverage()
        if self.service is not None:
            out["coordinator_restarted"] = self.service.restarted()
        return out
