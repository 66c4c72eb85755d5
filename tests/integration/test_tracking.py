"""MLflow tracking of a real 2-worker run against a real sqlite store, read back with MlflowClient,
through a real ``mlflow server`` REST API, by ``cafe-dist compare``, and (slow) in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from dmp_helpers import free_port, http_service
from mlflow.tracking import MlflowClient

from cafe_dist.cli import main
from cafe_dist.config import load_config
from cafe_dist.data.schema import DatasetMeta
from cafe_dist.resume import data_digest
from cafe_dist.train.launcher import run_training

REPO = Path(__file__).resolve().parents[2]


def test_two_worker_run_is_one_tracked_mlflow_run(tracked):
    uri, out, out_path = tracked
    assert out.world_size == 2 and out.steps == 60 and out.auc > 0.55, out
    assert out.compression_ratio == pytest.approx(100, rel=0.02)
    assert out.stats["state_consistent_across_ranks"] is True  # one hot map on both ranks at every step
    assert out.stats["promoted_total"] > 0 and out.stats["hot_ids"] > 0
    assert json.loads(out_path.read_text())["mlflow_run_id"] == out.mlflow_run_id
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("test-exp")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1  # exactly one run, opened by the driver; ranks never open their own
    run = runs[0]
    assert run.info.run_id == out.mlflow_run_id and run.info.status == "FINISHED"
    p, t, m = run.data.params, run.data.tags, run.data.metrics
    assert p["embedding.method"] == "cafe" and p["embedding.compression_ratio"] == "100.0"
    assert p["ray.num_workers"] == "2" and p["train.max_steps"] == "60" and p["cafe.threshold"] == "20.0"
    # its own method's settings only, as resolved (the hash share the ratio gave, not "none")
    assert not [k for k in p if k.split(".")[0] in ("lma", "mch", "qr", "robe", "full")]
    assert 0 < float(p["cafe.hash_fraction"]) < 1 and p["cafe.decay_mass"] == "per half-life"
    assert "cafe.ml_fraction" not in p and "cafe.ml_threshold" not in p  # cafe_ml's
    assert p["mlflow.tracking_uri"] == uri and "none" not in {p[k] for k in p if k.startswith("cafe.")}
    # the data it trained on, as an MLflow dataset input
    (given,) = run.inputs.dataset_inputs
    meta = Path(out.data_path, "meta.json").read_text()
    assert given.dataset.name == Path(out.data_path).name == t["dataset"]
    # the digest its checkpoints record as data.digest (one digest of a dataset, not two)
    manifest = json.loads(Path(out.checkpoint_path, "manifest-rank0.json").read_text())
    assert given.dataset.digest == data_digest(DatasetMeta.load(out.data_path)) == manifest["config"]["data.digest"]
    assert json.loads(given.dataset.profile)["rows"] == json.loads(meta)["rows"]
    assert t["method"] == "cafe" and t["world_size"] == "2" and t["compression_ratio"] == "100.0"
    assert len(t["git_commit"]) in (40, 7) or t["git_commit"] == "unknown"
    assert {"ray_version", "torch_version", "torchrec_version"} <= set(t)
    assert abs(m["final_auc"] - out.auc) < 1e-9 and abs(m["final_embedding_bytes"] - out.embedding_bytes) < 1e-9
    assert m["final_sync_overhead_fraction"] == out.stats["sync_overhead_fraction"]
    assert m["final_samples_per_sec"] == out.samples_per_sec and "error" not in t
    # each worker's peak resident memory beside the embedding bytes (a worker holds far more than them)
    peaks = out.stats["peak_rss_bytes_per_worker"]
    assert len(peaks) == 2 and m["final_peak_rss_bytes"] == max(peaks) > 100 * out.embedding_bytes
    # what CAFE does with its memory, in the output and in MLflow (synthetic data: against the oracle)
    assert 0 < out.stats["hot_slots_used"] <= out.stats["hot_slots"] and m["final_hot_slots"] == out.stats["hot_slots"]
    assert 0 < out.stats["hot_coverage"] <= out.stats["oracle_coverage"] + 0.05 and m["final_hot_coverage"] == out.stats["hot_coverage"]
    assert 0 < out.stats["oracle_coverage"] < 1
    history = {k: client.get_metric_history(run.info.run_id, k)
               for k in ("loss", "samples_per_sec", "hot", "promoted", "churn", "sync_overhead", "auc", "logloss")}
    assert [x.step for x in history["loss"]] == [20, 40, 60]
    # step metrics only at steps: the final figures have their own keys, so no step-0 point here
    assert [x.step for x in history["samples_per_sec"]] == [20, 40, 60]
    assert client.get_metric_history(run.info.run_id, "final_samples_per_sec")[0].step == 60
    assert [x.step for x in history["hot"]] == [20, 40, 60] and history["hot"][-1].value == out.stats["hot_ids"]
    assert [x.step for x in history["auc"]] == [30, 60]  # every train.eval_every steps; the last is final
    assert history["auc"][-1].value == out.auc and history["logloss"][-1].value == out.logloss
    assert all(0.4 < x.value < 1 for x in history["auc"])
    promoted = [x.value for x in history["promoted"]]  # running totals
    assert promoted == sorted(promoted) and promoted[-1] == out.stats["promoted_total"] > 0
    assert len(history["churn"]) == 3 and all(x.value >= 0 for x in history["churn"])
    assert all(0 < x.value < 1 for x in history["sync_overhead"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "result.json", "sharding_plan.txt", "plots"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {"plots/curves.png",
                                                                                   "plots/hot_set.png"}
    curves = Path(client.download_artifacts(run.info.run_id, "plots/curves.png")).read_bytes()
    assert b"tracked-cafe: training curves" in curves  # the plot's title (drawn, and in the PNG's Title)
    plan = Path(client.download_artifacts(run.info.run_id, "sharding_plan.txt")).read_text()
    assert "table_wise" in plan


def test_compare_lists_the_run_and_plots_auc_against_ratio(tracked, tmp_path, capsys):
    uri, out, _ = tracked
    plot = tmp_path / "auc.png"
    assert main(["compare", "--tracking-uri", uri, "--experiment", "test-exp", "--plot", str(plot)]) == 0
    header, rule, row = capsys.readouterr().out.strip().splitlines()[-3:]
    assert header.split() == ["run", "method", "data", "ratio", "emb", "MB", "AUC", "logloss", "steady", "samples/s",
                              "workers", "status"]
    data = Path(out.data_path).name
    assert row.split()[:3] == ["tracked-cafe", "cafe", data] and f"{out.auc:.4f}" in row and "FINISHED" in row
    # --data keeps the runs trained on that dataset
    assert main(["compare", "--tracking-uri", uri, "--experiment", "test-exp", "--data", data]) == 0
    assert "tracked-cafe" in capsys.readouterr().out
    assert main(["compare", "--tracking-uri", uri, "--experiment", "test-exp", "--data", "criteo_real"]) == 0
    assert "no runs in experiment 'test-exp' on data 'criteo_real'" in capsys.readouterr().out
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["compare", "--tracking-uri", uri, "--experiment", "test-exp", "--format", "json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["run_id"] == out.mlflow_run_id and entry["world_size"] == 2
    assert abs(entry["compression_ratio"] - out.compression_ratio) < 1e-6
    assert abs(entry["embedding_mb"] - out.embedding_bytes / 1e6) < 1e-9
    # steady state, as --output-json has it (the whole run's rate, with start-up, is samples_per_sec there)
    assert entry["samples_per_sec"] == pytest.approx(out.steady_samples_per_sec)
    assert out.steady_samples_per_sec > out.samples_per_sec


def test_compare_all_experiments_and_says_where_other_runs_are(tracked, capsys):
    uri, out, _ = tracked
    assert main(["compare", "--tracking-uri", uri, "--all-experiments"]) == 0
    assert "test-exp/tracked-cafe" in capsys.readouterr().out
    from mlflow.tracking import MlflowClient as Client

    client = Client(uri)
    other = client.create_experiment("elsewhere-exp")
    client.set_terminated(client.create_run(other).info.run_id)
    assert main(["compare", "--tracking-uri", uri, "--experiment", "test-exp"]) == 0
    said = capsys.readouterr()
    assert "tracked-cafe" in said.out and "runs also in 'elsewhere-exp' (1)" in said.err


def test_compare_names_the_experiments_there_when_one_is_missing(tracked, capsys):
    uri, _, _ = tracked
    assert main(["compare", "--tracking-uri", uri, "--experiment", "no-such"]) == 2
    err = capsys.readouterr().err
    assert "no experiment 'no-such'" in err and "test-exp" in err


@pytest.fixture(scope="module")
def mlflow_server(tracked):
    """The real MLflow tracking server on a loopback port, over the tracked run's store."""
    uri, _, _ = tracked
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    base = f"http://127.0.0.1:{port}"
    with http_service([str(mlflow_bin), "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
                       "--port", str(port), "--workers", "1"], f"{base}/health"):
        yield base


def _rest(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_the_mlflow_server_serves_the_run_over_rest(tracked, mlflow_server):
    _, out, _ = tracked
    exp = _rest(mlflow_server, "experiments/get-by-name?experiment_name=test-exp")["experiment"]
    found = _rest(mlflow_server, "runs/search", {"experiment_ids": [exp["experiment_id"]],
                                                 "filter": "tags.method = 'cafe'"})["runs"]
    assert [r["info"]["run_id"] for r in found] == [out.mlflow_run_id]
    metrics = {m["key"]: m["value"] for m in found[0]["data"]["metrics"]}
    assert abs(metrics["final_auc"] - out.auc) < 1e-9
    history = _rest(mlflow_server, f"metrics/get-history?run_id={out.mlflow_run_id}&metric_key=loss")
    assert [m["step"] for m in history["metrics"]] == [20, 40, 60]


@pytest.mark.slow
def test_the_mlflow_ui_renders_the_runs_in_headless_chromium(tracked, mlflow_server, tmp_path):
    """The experiment's runs page as a person's browser shows it (Debian's chromium, installed by
    scripts/setup-browser.sh when missing)."""
    if shutil.which("chromium") is None:
        subprocess.run(["bash", str(REPO / "scripts" / "setup-browser.sh")], check=True)
    _, out, _ = tracked
    exp_id = MlflowClient(tracked[0]).get_experiment_by_name("test-exp").experiment_id
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--window-size=1400,900"]
    url = f"{mlflow_server}/#/experiments/{exp_id}/runs"
    dom = subprocess.run(["chromium", *flags, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    assert "Runs - Experiment" in dom and "tracked-cafe" in dom, dom[-2000:]
    shot = tmp_path / "runs.png"
    subprocess.run(["chromium", *flags, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    assert shot.stat().st_size > 20_000  # kept beside the test's tmp dir for a person to look at


@pytest.mark.slow  # a full training run (default run: 15 min on 2 cores)
def test_a_failed_run_is_marked_failed_with_its_error(ray_cluster, tiny_synth, tmp_path):
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
