"""MLflow tracking of a real 2-worker run against a real sqlite store, read back with MlflowClient."""

import json

from mlflow.tracking import MlflowClient

from cafe_dist.config import load_config
from cafe_dist.train.launcher import run_training


def test_two_worker_run_is_one_tracked_mlflow_run(ray_cluster, tiny_synth, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {tiny_synth}}}\n")
    job = load_config(cfg, ["ray.num_workers=2", "train.batch_size=256", "train.max_steps=60", "train.log_every=20",
                            "embedding.method=cafe", "embedding.compression_ratio=100", "cafe.threshold=20",
                            f"mlflow.tracking_uri={uri}", "mlflow.experiment=test-exp",
                            f"ray.storage_path={tmp_path / 'runs'}"])
    out_path = tmp_path / "out.json"
    out = run_training(job, out_path)
    assert json.loads(out_path.read_text())["mlflow_run_id"] == out["mlflow_run_id"]

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("test-exp")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1  # exactly one run, opened by the driver; ranks never open their own
    run = runs[0]
    assert run.info.run_id == out["mlflow_run_id"] and run.info.status == "FINISHED"
    p, t, m = run.data.params, run.data.tags, run.data.metrics
    assert p["embedding.method"] == "cafe" and p["embedding.compression_ratio"] == "100.0"
    assert p["ray.num_workers"] == "2" and p["train.max_steps"] == "60" and p["cafe.threshold"] == "20.0"
    assert t["method"] == "cafe" and t["world_size"] == "2" and t["compression_ratio"] == "100.0"
    assert len(t["git_commit"]) in (40, 7) or t["git_commit"] == "unknown"
    assert {"ray_version", "torch_version", "torchrec_version"} <= set(t)
    assert abs(m["final_auc"] - out["auc"]) < 1e-9 and abs(m["embedding_bytes"] - out["embedding_bytes"]) < 1e-9
    assert m["sync_overhead_fraction"] == out["sync_overhead_fraction"]
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [x.step for x in loss] == [20, 40, 60]
    assert len(client.get_metric_history(run.info.run_id, "hot")) == 3
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "result.json", "sharding_plan.txt", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/curves.png"]


def test_a_failed_run_is_marked_failed_with_its_error(ray_cluster, tiny_synth, tmp_path):
    import pytest

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {tiny_synth}}}\n")
    job = load_config(cfg, ["train.max_steps=5", "embedding.dim=16", "ray.sharding_types=[row_wise]",
                            f"mlflow.tracking_uri={uri}", f"ray.storage_path={tmp_path / 'runs'}"])
    with pytest.raises(Exception, match="row_wise"):
        run_training(job)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cafe-dist").experiment_id])
    assert run.info.status == "FAILED" and "row_wise" in run.data.tags["error"]
