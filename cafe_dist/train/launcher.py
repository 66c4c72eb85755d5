"""Driver side of ``cafe-dist train``: data on first use, Ray start-up, TorchTrainer, results."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cafe_dist.checkpoint_dirs import Found, keep_run_dataset
from cafe_dist.config import ConfigError, JobConfig, SynthConfig
from cafe_dist.data import storage
from cafe_dist.data.reader import SplitFiles
from cafe_dist.data.schema import DatasetMeta
from cafe_dist.embeddings import REGISTRY
from cafe_dist.errors import BadInputError, user_error
from cafe_dist.logs import drop_ray_internal_lines
from cafe_dist.logs import quiet as quiet_logs
from cafe_dist.mlflow_store import resolve_uri
from cafe_dist.outputs import check_dir, write_text
from cafe_dist.result import FINAL, RunResult
from cafe_dist.resume import data_digest, decide, fingerprint, finished_result, result_config
from cafe_dist.tracking import RunTracker, TrackedDataset, run_tags

log = logging.getLogger(__name__)


def _synth_spec(s: SynthConfig):
    from cafe_dist.data.synth import SynthSpec

    return SynthSpec(rows=s.rows, seed=s.seed, cardinality_scale=s.cardinality_scale, zipf_a=s.zipf_a,
                     drift_period=s.drift_period, drift_fraction=s.drift_fraction, profile=s.profile)


def _regenerate_reason(job: JobConfig) -> str | None:
    """Why ``data.path`` must be generated (again) from ``data.synthetic``, or None to use it as it is."""
    path, s = job.data.path, job.data.synthetic
    if not storage.is_file(storage.join(path, "meta.json")):
        if s is None or storage.is_uri(path):
            raise FileNotFoundError(
                f"data.path {path} holds no converted dataset (no meta.json). Convert data with "
                "`cafe-dist data criteo|avazu --out DIR`, or add a data.synthetic section to generate "
                "synthetic data there on first use.")
        return "not found"
    if s is None or storage.is_uri(path):
        return None
    meta = DatasetMeta.load(path)
    if meta.format != "synth":
        raise BadInputError(
            f"data.path {path} holds a {meta.format} dataset (from {', '.join(meta.sources) or '?'}), but the job "
            "has a data.synthetic section, which describes generated data: remove data.synthetic to train on it, "
            "or point data.path at another directory to generate there.")
    want = json.loads(json.dumps(_synth_spec(s).record(s.test_fraction)))
    have = meta.extra.get("synth") or {}
    changed = [k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
    if not changed:
        return None
    return "it was generated from another spec (" + ", ".join(
        f"{k} {have.get(k)!r} -> {want.get(k)!r}" for k in changed if k != "cardinalities") + ")"


def ensure_data(job: JobConfig) -> DatasetMeta:
    """Load ``data.path``; generate it from ``data.synthetic`` when absent or made from another spec
    (the spec is recorded in ``meta.json``, so a changed setting is never silently ignored). Inputs
    training cannot use are refused here, before Ray starts."""
    path = job.data.path
    reason = _regenerate_reason(job)
    if reason is not None:
        from cafe_dist.data.synth import generate_synthetic

        s = job.data.synthetic
        log.info("%s: %s; generating %s synthetic rows (seed %d)", path, reason, f"{s.rows:,}", s.seed)
        generate_synthetic(path, _synth_spec(s), test_fraction=s.test_fraction, overwrite=reason != "not found")
    meta = DatasetMeta.load(path)
    if not meta.labeled:
        raise BadInputError(f"data.path {path} was converted from unlabeled files (no click labels); training "
                            "needs labels. Convert the labeled training file instead.")
    if meta.rows["train"] == 0:
        raise BadInputError(f"data.path {path} has an empty train split")
    if meta.rows["test"] == 0:
        raise BadInputError(
            f"data.path {path} has no test split (converted with --test-fraction 0), so a run could not report "
            "AUC or logloss. Convert again with --test-fraction above 0 (e.g. the default 1/7).")
    return meta


def _joins_a_cluster(job: JobConfig) -> bool:
    import ray

    return bool(job.ray.address or os.environ.get("RAY_ADDRESS") or ray.is_initialized())


def _init_ray(job: JobConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    quiet = {} if job.ray.verbose else {"logging_level": logging.WARNING}
    if not job.ray.verbose:  # a local cluster's actors inherit these: Ray Data's per-dataset lines (and
        # its warning that progress bars are off), deprecations inside Ray Train: nothing a user can act on
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
        os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    address = job.ray.address or os.environ.get("RAY_ADDRESS")  # a Ray job's driver gets RAY_ADDRESS
    if address:
        ray.init(address=address, log_to_driver=True, **quiet)
    else:  # a local cluster: the machine's CPUs for the workers (check_resources held them to that);
        # each worker reads its own rows (cafe_dist.data.reader), so nothing else needs a CPU of its
        # own. Unless verbose, Ray's note that token authentication is on (its default) stays out.
        with quiet_logs("ray._private.authentication", enabled=not job.ray.verbose):
            ray.init(num_cpus=os.cpu_count() or 1, log_to_driver=True, **_own_dashboard(), **quiet)
    if not job.ray.verbose:
        drop_ray_internal_lines()


@dataclass(frozen=True)
class Checked:
    """What the driver's checks found: the splits' row groups (the workers read by them) and the
    settings the method resolved for this data (the run's MLflow params show them)."""

    splits: dict[str, SplitFiles]
    resolved: dict[str, Any]


def _own_dashboard() -> dict[str, int]:
    """A local cluster's dashboard on a free port its own processes are told of: Ray Train's
    placement-group cleaner looks its actors up through the state API, which without an address
    searches the machine for Ray clusters and, finding another one (a second run, a test session's),
    fails with a traceback in every run's output. Nothing when the user set RAY_API_SERVER_ADDRESS."""
    given = os.environ.get("RAY_API_SERVER_ADDRESS")
    if given and given != _OWN_DASHBOARD.get("url"):
        return {}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    os.environ["RAY_API_SERVER_ADDRESS"] = _OWN_DASHBOARD["url"] = url  # the raylet, so every worker, inherits it
    return {"dashboard_port": port}


_OWN_DASHBOARD: dict[str, str] = {}  # the address _own_dashboard set in this process (a later local cluster replaces it)


def preflight(job: JobConfig, meta: DatasetMeta, options: Any = None, values: str | None = None) -> Checked:
    """What can be checked on the driver is checked before any worker starts: the Parquet schema,
    whether the compression ratio can be met (tables sized on the meta device: no memory).
    ``options``: the method's settings as the workers get them (default: the job's); ``values``:
    the list of values they get."""
    import torch

    from cafe_dist.data.validate import check_parquet_schema
    from cafe_dist.model_spec import ModelSpec

    splits = check_parquet_schema(storage.resolve(job.data.path), meta)  # workers elsewhere read these paths
    try:
        emb = ModelSpec.from_job(job, options, values=values).embedding(meta, torch.device("meta"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return Checked(splits, emb.resolved_options())




def check_resources(job: JobConfig, local: bool) -> None:
    """Fail with the numbers, not a hang, when the workers Ray Train asks for cannot all start: on a
    local cluster (checked before it starts) against this machine's CPUs, else against the
    cluster's."""
    workers_cpu = job.ray.num_workers * job.ray.cpus_per_worker
    if not local:
        import ray

        have = ray.cluster_resources()
        cpus, gpus, where = have.get("CPU", 0), have.get("GPU", 0), "the Ray cluster has"
    else:
        import torch

        cpus, gpus, where = os.cpu_count() or 1, torch.cuda.device_count(), "this machine has"
    if cpus < workers_cpu:
        need = f"{workers_cpu:g} CPUs ({workers_cpu:g} for the workers at ray.cpus_per_worker={job.ray.cpus_per_worker:g})"
        fit = cpus
        raise ConfigError(
            f"ray.num_workers={job.ray.num_workers} needs {need} but {where} {cpus:g}; lower ray.num_workers (at "
            f"most {int(fit // job.ray.cpus_per_worker)} fit), add nodes, or set ray.cpus_per_worker below 1 (e.g. "
            f"{max(fit, 0.1) / job.ray.num_workers:.2g}) if oversubscribing the CPUs is really wanted")
    if job.ray.use_gpu and gpus < job.ray.num_workers:
        raise ConfigError(
            f"ray.use_gpu=true with ray.num_workers={job.ray.num_workers} needs {job.ray.num_workers} GPUs but "
            f"{where} {gpus:g}; lower ray.num_workers, add GPU nodes, or set ray.use_gpu=false")


def _write_json(out: RunResult, output_json: str | Path | None) -> None:
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        write_text(output_json, json.dumps(out.to_dict(), indent=2) + "\n")


def default_run_name(job: JobConfig, data_dir: str) -> str:
    """An unnamed run's name: what it trains, on what, when (``cafe-100x-criteo_kaggle-20261203-1530-a1b2c3``)."""
    return (f"{job.embedding.method}-{job.embedding.compression_ratio:g}x-{storage.name(data_dir)}-"
            f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")


def run_training(job: JobConfig, output_json: str | Path | None = None) -> RunResult:
    """Train ``job`` (or resume it, or report it as done: see :mod:`cafe_dist.resume`); returns the
    result. Everything that can be refused is refused before Ray starts."""
    meta = ensure_data(job)
    data_dir = storage.resolve(job.data.path)  # absolute local path, or the URI as given
    method = REGISTRY[job.embedding.method]
    options = method.prepare_data(data_dir, meta, job.method_options())
    values = method.values_file(data_dir, meta, options)  # full: its vocabulary (built if a run needs one)
    checked = preflight(job, meta, options, values)
    # an unnamed run gets a fresh name (a named one resumes its newest checkpoint)
    name = job.ray.name or default_run_name(job, data_dir)
    storage_path = storage.resolve(job.ray.storage_path)
    if not storage.is_uri(storage_path):  # a file there, or a read-only disk: said now, not at the first checkpoint
        check_dir(storage_path, flag="ray.storage_path")
    run_dir = storage.join(storage_path, name)
    decision = decide(job, meta, name, run_dir)
    if decision.finished is not None:  # the same settings ran to the end already: that is the answer
        out = _already_finished(job, name, decision.finished, data_dir)
    else:
        out = _fit(job, meta, options, values, checked, data_dir, name, storage_path, run_dir,
                   decision.resume_from)
    _write_json(out, output_json)
    return out


def _already_finished(job: JobConfig, name: str, done: Found, data_dir: str) -> RunResult:
    if job.ray.resume != "force":  # (a forced resume with nothing to train said so in resume.decide)
        log.info("%s already finished (step %d, %s) with these settings: reporting its result, training "
                 "nothing. For a new run use another ray.name.", name, done.step, done.path)
    return RunResult.from_report(job.embedding.method, job.embedding.compression_ratio,
                                 {**finished_result(done), FINAL: True}, data_path=str(data_dir),
                                 checkpoint_path=done.path, already_finished=True,
                                 mlflow_run_id=done.info.get("mlflow_run_id"))


def start_ray(job: JobConfig) -> None:
    """Join or start the cluster, checking it can hold the workers."""
    local = not _joins_a_cluster(job)
    if local:
        check_resources(job, local)  # before the local cluster starts: what this machine can hold
    _init_ray(job)
    if not local:
        check_resources(job, local)


def _open_tracking(job: JobConfig, name: str, found: Found | None, fingerprint_: str, meta: DatasetMeta,
                   resolved: dict[str, Any], data_dir: str) -> RunTracker | None:
    """The run's MLflow run: the driver opens it (or reopens the one a resumed run logged into);
    rank 0 logs into it; nobody else does."""
    if not job.mlflow.enabled:
        return None
    tracker = RunTracker(resolve_uri(job.mlflow.tracking_uri), job.mlflow.experiment,
                         REGISTRY[job.embedding.method].plots)
    previous = found.info.get("mlflow_run_id") if found is not None else None
    if not (previous and tracker.resume(previous)):
        tags = {**run_tags(job.embedding.method, job.embedding.compression_ratio, job.ray.num_workers),
                **job.mlflow.run_tags, **({"resumed_from_run": previous} if previous else {}),
                "config_fingerprint": fingerprint_}
        dataset = TrackedDataset.of(data_dir, data_digest(meta), meta.rows)
        params = {**job.run_params(resolved), "mlflow.tracking_uri": tracker.uri}
        tracker.start(name, params, tags,
                      yaml.safe_dump(job.model_dump(), sort_keys=False), dataset)
    return tracker


def _fit(job: JobConfig, meta: DatasetMeta, options: Any, values: str | None, checked: Checked,
         data_dir: str, name: str, storage_path: str, run_dir: str, found: Found | None) -> RunResult:
    """Start the services a run needs (Ray, the method's own service, MLflow), train, collect the result.
    ``options``: the method's settings after :meth:`~CompressedEmbedding.prepare_data`; ``values``:
    its list of values (:meth:`~CompressedEmbedding.values_file`)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cafe_dist.train.spec import MlflowTarget, WorkerSpec
    from cafe_dist.train.worker import train_loop_per_worker, worker_tmp

    config = result_config(job, meta)
    resume_key = {"config": config, "config_fingerprint": fingerprint(config)}
    if found is not None:
        log.info("%s: resuming from %s (step %d)", name, found.path, found.step)
    # export and serving read the run's own copies, whatever data_dir holds later
    values = keep_run_dataset(run_dir, data_dir, values)
    start_ray(job)
    service = REGISTRY[job.embedding.method].service  # a process the method needs beside the workers, or None
    handle = service.start(name, state_dir=storage.join(run_dir, "coordinator")) if service else None
    tracker = _open_tracking(job, name, found, resume_key["config_fingerprint"], meta, checked.resolved,
                             data_dir)
    spec = WorkerSpec(job=job, meta=meta, method=REGISTRY[job.embedding.method], method_options=options,
                      data_dir=str(data_dir), values=values, run_dir=run_dir, run_name=name,
                      fit_id=uuid.uuid4().hex[:12],
                      resume_key=resume_key, splits=checked.splits, service=service is not None,
                      mlflow=MlflowTarget(tracker.uri, tracker.run_id) if tracker else None)
    trainer = _interruptible(TorchTrainer)(
        train_loop_per_worker,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(num_workers=job.ray.num_workers, use_gpu=job.ray.use_gpu,
                                     resources_per_worker={"CPU": job.ray.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if job.ray.use_gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=storage_path,  # Ray Train's own INFO lines only when verbose
                             logging_config=LoggingConfig(log_level="INFO" if job.ray.verbose else "WARNING"),
                             failure_config=FailureConfig(max_failures=job.ray.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=job.checkpoint.keep)),
    )
    t0 = time.perf_counter()
    try:
        try:
            result = trainer.fit()
        except Exception as e:  # a worker's own error (bad data, divergence) as it said it, not Ray's wrapper
            raise user_error(e) or e from None
        except SystemExit:  # Ray's SIGINT handler exits from inside fit once the run is aborted
            if not trainer.interrupted:
                raise
        finally:
            if threading.current_thread() is threading.main_thread():  # (a sweep's trial: not ours to touch)
                signal.signal(signal.SIGINT, signal.default_int_handler)  # Ray's points at the ended run
            if service is not None:
                service.stop(handle)
            shutil.rmtree(worker_tmp(spec.fit_id), ignore_errors=True)  # what stopped workers left there
        if trainer.interrupted:  # Ctrl-C: the run's checkpoints stay; the CLI says so (exit 130)
            raise KeyboardInterrupt(f"run {name} interrupted; its checkpoints are in {run_dir}")
        if result.error:
            raise user_error(result.error) or result.error
    except BaseException as e:
        if tracker:
            tracker.fail(e)
        raise
    out = RunResult.from_report(job.embedding.method, job.embedding.compression_ratio, result.metrics or {},
                                data_path=str(data_dir), wall_time_s=time.perf_counter() - t0,
                                checkpoint_path=result.checkpoint.path if result.checkpoint else None,
                                mlflow_run_id=tracker.run_id if tracker else None)
    if tracker:
        _log_model(job, tracker, run_dir, out)
        tracker.finish(out)
    return out


def _interruptible(trainer_cls: type) -> type:
    """``trainer_cls`` noting a Ctrl-C: Ray Train's own SIGINT handler aborts the run and then
    leaves ``fit`` returning, raising, or calling ``sys.exit(0)`` from inside it, so the caller
    cannot tell an interrupted run from a finished or failed one without this flag."""

    class Interruptible(trainer_cls):
        interrupted = False

        def _register_sigint_handler(self, controller) -> None:
            if threading.current_thread() is not threading.main_thread():  # a sweep's Ray Tune trial
                return  # signals reach the main thread only: Tune stops its trials itself
            super()._register_sigint_handler(controller)
            ray_handler = signal.getsignal(signal.SIGINT)

            def handler(signum, frame) -> None:
                self.interrupted = True
                ray_handler(signum, frame)

            signal.signal(signal.SIGINT, handler)

    return Interruptible


def _log_model(job: JobConfig, tracker: RunTracker, run_dir: str, out: RunResult) -> None:
    """The finished run's model as its MLflow pyfunc model (needs the tables: checkpoint.at_end)."""
    if not (job.mlflow.log_model and job.checkpoint.at_end) or out.checkpoint_path is None:
        return
    t0 = time.perf_counter()
    try:
        uri = tracker.log_model(run_dir, job.mlflow.register_model)
    except Exception as e:  # the run itself succeeded: say why there is no model, keep the result
        log.warning("the run finished but its model was not logged to MLflow: %s", e)
        return
    log.info("model logged: %s (%.1f s); serve it with `source .venv/bin/activate; mlflow models serve -m runs:/%s/model --env-manager local`",
             uri, time.perf_counter() - t0, tracker.run_id)
