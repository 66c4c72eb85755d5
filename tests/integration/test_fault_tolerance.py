"""Checkpoints, resume and fault injection on real 2-worker CAFE runs (Ray Train, DMP over gloo).

Every run here uses the same data, seed and schedule (60 steps, checkpoints every 20), so each
interrupted run is compared with the uninterrupted one: same AUC, same samples, the same batches
on every rank in the same order (CRC32 chained over each rank's batches), the same hot map after
every step (a digest chained over the per-step checksums)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cafe_dist.checkpoint_dirs import find_latest, verify
from cafe_dist.config import ConfigError, load_config
from cafe_dist.embeddings.cafe.hotmap import HotMap
from cafe_dist.result import RunResult
from cafe_dist.train.launcher import run_training

STEPS, EVERY = 60, 20


def _job(tmp: Path, data: Path, name: str, *extra: str):
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(f"data: {{path: {data}}}\n")
    return load_config(cfg, [
        "ray.num_workers=2", "train.batch_size=256", f"train.max_steps={STEPS}", "train.log_every=20",
        "embedding.method=cafe", "embedding.compression_ratio=20", "cafe.threshold=5", "cafe.ml_threshold=2",
        f"checkpoint.every_steps={EVERY}", f"ray.storage_path={tmp / 'runs'}", f"ray.name={name}", *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ft")


@pytest.fixture(scope="module")
def baseline(ray_cluster, tiny_synth, runs) -> RunResult:
    out = run_training(_job(runs, tiny_synth, "baseline"))
    assert out.steps == STEPS and out.stats["restarts"] == 0 and out.stats["resumed_from_step"] is None
    assert out.stats["state_consistent_across_ranks"] and out.stats["promoted_total"] > 0
    return out


def _same_training(out: RunResult, base: RunResult) -> None:
    assert out.steps == base.steps and out.train_samples == base.train_samples
    assert out.stats["data_digest"] == base.stats["data_digest"], "a rank trained on other batches (skipped or repeated)"
    assert out.stats["hot_map_digest"] == base.stats["hot_map_digest"], "the hot map differs at some step"
    assert out.stats["state_consistent_across_ranks"]
    assert abs(out.auc - base.auc) <= 0.003, (out.auc, base.auc)


def _hot_map(checkpoint: Path, rank: int) -> HotMap:
    m = HotMap()
    m.load_state_dict(torch.load(checkpoint / f"rank{rank}.pt", weights_only=False)["embedding"]["hot_map"])
    return m


def test_a_killed_worker_is_replaced_and_training_resumes_exactly(baseline, tiny_synth, runs, tmp_path):
    out_json = tmp_path / "out.json"
    out = run_training(_job(runs, tiny_synth, "killed", "fault.kill_worker_at_step=50", "ray.max_failures=1"),
                       out_json)
    written = json.loads(out_json.read_text())
    assert written["restarts"] >= 1 and written["resumed_from_step"] == 40
    _same_training(out, baseline)
    # the hot map the resumed workers started from is the one checkpointed at step 40, on both ranks,
    # and it is the uninterrupted run's hot map at step 40
    ckpt = runs / "runs" / "killed" / "checkpoint_step00000040"
    maps = [_hot_map(ckpt, r) for r in (0, 1)]
    assert maps[0].checksum() == maps[1].checksum() == out.stats["resumed_hot_map_checksum"]
    assert len(maps[0]) > 0
    assert maps[0].checksum() == _hot_map(runs / "runs" / "baseline" / "checkpoint_step00000040", 0).checksum()
    assert (runs / "runs" / "killed" / ".faults" / "kill_worker").exists()


@pytest.mark.slow  # the pipeline's wiring: tests/integration/test_pipeline.py (default run)
def test_a_pipelined_run_killed_and_resumed_trains_as_the_plain_loop(baseline, tiny_synth, runs):
    """Through TorchRec's train pipeline (as GPU workers train; here on CPU), killed at step 50 with
    batches in flight and resumed from step 40: the same batches, hot maps and AUC as the plain,
    uninterrupted baseline."""
    out = run_training(_job(runs, tiny_synth, "pipelined", "train.pipeline=on", "fault.kill_worker_at_step=50",
                            "ray.max_failures=1"))
    assert out.stats["pipelined"] and out.stats["resumed_from_step"] == 40
    _same_training(out, baseline)


@pytest.mark.slow
def test_a_killed_coordinator_restarts_with_its_state(baseline, tiny_synth, runs):
    """Killed right after the round of step 30 was sent and before it is applied (sync_lag 2)."""
    out = run_training(_job(runs, tiny_synth, "coordinator", "fault.kill_coordinator_at_step=30"))
    assert out.stats["coordinator_restarted"] and out.stats["restarts"] == 0
    assert out.stats["hot_map_version"] == baseline.stats["hot_map_version"]
    _same_training(out, baseline)


@pytest.mark.slow
def test_resume_falls_back_past_a_truncated_checkpoint(baseline, tiny_synth, runs, tmp_path):
    """A run stops at step 40 (checkpoints at 20 and, final, 40); the step-40 one is then truncated.
    Re-running the same name resumes from step 20 in the same MLflow run and ends as the baseline."""
    first = run_training(_job(runs, tiny_synth, "truncated", "train.max_steps=40"))
    run_dir = runs / "runs" / "truncated"
    newest = find_latest(str(run_dir))
    assert newest is not None and newest.step == 40
    victim = Path(newest.path) / "__1_0.distcp"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match="__1_0.distcp"):
        verify(newest.path)
    # more steps than the first run: train.max_steps changed, so continuing needs ray.resume=force
    out = run_training(_job(runs, tiny_synth, "truncated", "ray.resume=force"), tmp_path / "out.json")
    assert out.stats["resumed_from_step"] == 20
    assert out.mlflow_run_id == first.mlflow_run_id  # the same MLflow run goes on
    _same_training(out, baseline)


def _copy_checkpoints(runs: Path, dest: Path) -> Path:
    for step in (20, 40):
        name = f"checkpoint_step{step:08d}"
        shutil.copytree(runs / "runs" / "baseline" / name, dest / name)
    return dest / "checkpoint_step00000040"


def test_a_checkpoint_without_every_manifest_is_incomplete(baseline, runs, tmp_path):
    """A crash between ranks' uploads: rank 1's manifest never arrived."""
    newest = _copy_checkpoints(runs, tmp_path)
    (newest / "manifest-rank1.json").unlink()
    found = find_latest(str(tmp_path))
    assert found.step == 20 and "rank 1 never finished" in found.skipped[0]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_file_makes_the_checkpoint_incomplete(baseline, runs, tmp_path, damage):
    newest = _copy_checkpoints(runs, tmp_path)
    assert find_latest(str(tmp_path)).step == 40
    victim = newest / "rank0.pt"
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2:]
    else:  # same size, one bit off: only the hash can tell
        data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    found = find_latest(str(tmp_path))
    assert found.step == 20
    assert ("bytes, manifest says" if damage == "truncate" else "SHA-256 differs") in found.skipped[0]


def test_resuming_on_another_number_of_workers_says_why_not(baseline, tiny_synth, runs):
    with pytest.raises(ConfigError, match=r"written by 2 workers and this run has 1.*ray.num_workers=2"):
        run_training(_job(runs, tiny_synth, "baseline", "ray.num_workers=1"))


def test_fault_injection_needs_recovery_configured(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("data: {path: x}\nfault: {kill_worker_at_step: 5}\n")
    with pytest.raises(ConfigError, match="ray.max_failures"):
        load_config(cfg)
    with pytest.raises(ConfigError, match=r"needs a method with a coordinator \(cafe, cafe_ml\), not full"):
        load_config(cfg, ["ray.max_failures=1", "fault.kill_worker_at_step=null", "fault.kill_coordinator_at_step=3"])


@pytest.mark.slow  # three 2-worker runs (~40 s each)
def test_a_resume_inside_a_unit_seeks_to_the_next_batch(ray_cluster, tiny_synth, tmp_path):
    """Row groups of 1,024 rows make each rank's unit 4 batches of 256 (cafe_dist.train.row_order):
    a run stopped at step 10 (halfway through a unit) and resumed trains the same batches, in the
    same order on every rank, as the run that never stopped."""
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    for path in sorted((data / "train").glob("*.parquet")):
        pq.write_table(pq.read_table(path), path, row_group_size=1024)

    def job(name: str, *extra: str):
        return _job(tmp_path, data, name, "embedding.method=hash", "checkpoint.every_steps=10", "train.max_steps=30",
                    *extra)

    whole = run_training(job("whole"))
    run_training(job("stopped", "train.max_steps=10"))
    resumed = run_training(job("stopped", "ray.resume=force"))
    assert resumed.stats["resumed_from_step"] == 10 and resumed.steps == whole.steps == 30
    assert resumed.stats["data_digest"] == whole.stats["data_digest"]
    assert resumed.train_samples == whole.train_samples
