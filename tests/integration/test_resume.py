"""Re-running a named run resumes it only with the settings that made its checkpoints; a finished
run is reported as done; a sweep reuses a finished cell only when its settings match. Real Ray
runs, real checkpoints, a real MLflow store."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from cafe_dist.cli import main
from cafe_dist.config import ConfigError, load_config
from cafe_dist.result import RunResult
from cafe_dist.resume import RUN_CONTROL_KEYS, fingerprint, result_config
from cafe_dist.tracking import RunTracker
from cafe_dist.train.launcher import run_training


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    return tmp, f"sqlite:///{tmp / 'mlflow.db'}"


def _job(store, name: str, *extra: str):
    tmp, uri = store
    cfg = tmp / "job.yaml"
    return cfg, load_config(cfg, ["train.batch_size=256", "train.max_steps=10", "embedding.method=hash",
                                  "embedding.compression_ratio=10", f"mlflow.tracking_uri={uri}",
                                  "mlflow.experiment=resume", f"ray.storage_path={tmp / 'runs'}",
                                  f"ray.name={name}", *extra])


NAME = "grid-hash-10x"  # the one cell of sweep "grid" below: one training serves every test here


def _sweep(store, *extra: str) -> list[str]:
    tmp, uri = store
    return ["sweep", "--config", str(tmp / "job.yaml"), "--methods", "hash", "--ratios", "10", "--name", "grid",
            "--set", "train.batch_size=256", "--set", "train.max_steps=10", "--set", f"mlflow.tracking_uri={uri}",
            "--set", "mlflow.experiment=resume", "--set", f"ray.storage_path={tmp / 'runs'}", *extra]


@pytest.fixture(scope="module")
def finished(ray_cluster, tiny_synth, store):
    (store[0] / "job.yaml").write_text(f"data: {{path: {tiny_synth}}}\n")
    assert main(_sweep(store, "--output-json", str(store[0] / "sweep.json"))) == 0
    (run,) = _runs(store[1])
    assert run.info.run_name == NAME and run.data.tags["sweep"] == "grid"
    return {"auc": run.data.metrics["final_auc"], "mlflow_run_id": run.info.run_id}


def _runs(uri: str):
    """The training runs (a sweep's parent run, which holds its table and plot, is no cell)."""
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name("resume").experiment_id],
                              "tags.sweep_parent IS NULL")


def test_the_fingerprint_ignores_run_control_and_other_methods_settings(tiny_synth, store):
    from cafe_dist.data.schema import DatasetMeta

    (store[0] / "job.yaml").write_text(f"data: {{path: {tiny_synth}}}\n")
    meta = DatasetMeta.load(tiny_synth)
    base = result_config(_job(store, "a")[1], meta)
    same = ["ray.name=b", "ray.max_failures=3", "train.eval_every=5", "train.log_every=7", "train.eval_batch_size=99", "train.pipeline=on", "checkpoint.keep=9",
            "mlflow.experiment=x", "cafe.threshold=30", "robe.z=8", f"data.path={tiny_synth}/."]
    assert fingerprint(result_config(_job(store, "a", *same)[1], meta)) == fingerprint(base)
    assert set(RUN_CONTROL_KEYS) <= {k.split("=")[0] for k in same}
    for change in ("train.lr=0.1", "train.max_steps=11", "embedding.dim=8", "model.over_arch=[32]", "train.seed=1"):
        assert fingerprint(result_config(_job(store, "a", change)[1], meta)) != fingerprint(base), change
    assert "data.digest" in base and not any(k.startswith(("ray.", "mlflow.", "cafe.")) for k in base)


def test_a_finished_run_is_reported_as_done_not_trained_again(finished, store, capsys):
    again = run_training(_job(store, NAME)[1])
    assert again.already_finished and again.auc == finished["auc"] and again.steps == 10
    assert again.mlflow_run_id == finished["mlflow_run_id"] and again.checkpoint_path.endswith("_end")
    (run,) = _runs(store[1])
    assert run.info.status == "FINISHED" and run.data.tags["config_fingerprint"]


def test_a_changed_setting_is_refused_with_the_keys_and_the_ways_out(finished, store):
    with pytest.raises(ConfigError) as e:
        run_training(_job(store, NAME, "train.lr=0.2")[1])
    msg = str(e.value)
    assert "train.lr: 0.05 in the checkpoint, 0.2 now" in msg
    assert "--set ray.name=grid-hash-10x-2" in msg and "--resume force" in msg
    (run,) = _runs(store[1])
    assert run.info.status == "FINISHED" and run.data.params["train.lr"] == "0.05"  # the old run untouched


def test_another_method_cannot_be_forced_onto_a_checkpoint(finished, store):
    """Was: a crash on a missing checkpoint key, and the old FINISHED MLflow run flipped to FAILED."""
    with pytest.raises(ConfigError, match=r"embedding.method: 'hash' in the checkpoint, 'qr' now(.|\n)*"
                                          r"--resume force cannot help"):
        run_training(_job(store, NAME, "embedding.method=qr", "ray.resume=force")[1])
    (run,) = _runs(store[1])
    assert run.info.status == "FINISHED"


def test_a_sweep_reuses_matching_cells_and_refuses_changed_ones(finished, store, capsys):
    capsys.readouterr()
    assert main(_sweep(store)) == 0  # same settings: reused, and said so
    assert f"reusing run {NAME}, finished earlier with the same settings" in capsys.readouterr().err
    assert main(_sweep(store, "--set", "train.lr=0.3")) == 2  # was: the old AUC reported under the new lr
    err = capsys.readouterr().err
    assert "sweep 'grid' already has runs made with other settings; nothing was run" in err
    assert "hash at 10x" in err and "train.lr: 0.05 in the checkpoint, 0.3 now" in err and "another --name" in err
    (run,) = _runs(store[1])
    assert run.info.run_id == finished["mlflow_run_id"] and run.data.params["train.lr"] == "0.05"


def test_resume_force_that_trains_no_step_changes_nothing(finished, store, tmp_path, capsys):
    """Was: the finished run's final checkpoint rewritten without its tables ("state": false), export
    and hot broken, the old AUC reported as new, MLflow's final_samples_per_sec set to 0.0."""
    import hashlib
    from pathlib import Path

    run_dir = store[0] / "runs" / NAME

    def tree():
        return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(run_dir.rglob("*")) if p.is_file() and "coordinator" not in p.parts}
    (before_run,) = _runs(store[1])
    before = tree()
    out = run_training(_job(store, NAME, "train.lr=0.2", "ray.resume=force")[1])
    assert out.already_finished and out.auc == finished["auc"] and out.steps == 10
    assert tree() == before  # the checkpoints, manifests included, byte for byte
    (run,) = _runs(store[1])
    assert run.data.metrics == before_run.data.metrics and run.data.params["train.lr"] == "0.05"
    assert main(["export", "--checkpoint", out.checkpoint_path, "--out", str(tmp_path / "m")]) == 0
    assert Path(tmp_path / "m" / "weights.pt").is_file()


@pytest.mark.slow
def test_resume_force_continues_under_new_train_settings(finished, store):
    out = run_training(_job(store, NAME, "train.max_steps=20", "ray.resume=force")[1])
    assert out.stats["resumed_from_step"] == 10 and out.steps == 20 and not out.already_finished
    assert out.mlflow_run_id == finished["mlflow_run_id"]


def test_finishing_a_resumed_run_clears_the_error_of_the_interrupted_attempt(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = RunTracker(uri, "attempts")
    run_id = first.start("r", {"train.lr": 0.05}, {}, "train: {}\n")
    first.fail(KeyboardInterrupt("stopped"))
    client = MlflowClient(uri)
    assert client.get_run(run_id).data.tags["error"] == "KeyboardInterrupt: stopped"
    second = RunTracker(uri, "attempts")
    assert second.resume(run_id)
    second.finish(RunResult(method="hash", auc=0.75, logloss=0.5, compression_ratio=10.0,
                            requested_compression_ratio=10.0, embedding_bytes=100, full_embedding_bytes=1000,
                            steps=30, train_samples=960, samples_per_sec=1000.0, world_size=1))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert {m.key: m.step for m in client.get_metric_history(run_id, "final_samples_per_sec")} == {
        "final_samples_per_sec": 30}
