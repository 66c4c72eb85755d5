"""``cafe-dist sweep``: a grid of real tracked runs, the comparison table and the AUC-vs-ratio plot."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from cafe_dist.cli import main
from cafe_dist.config import ConfigError, load_config
from cafe_dist.sweep import grid


def test_the_sweep_job_spec_loads_and_names_its_grid():
    job = load_config("jobs/sweep_compression.yaml")
    methods, ratios = grid(job, None, None)
    assert len(methods) == 9 and ratios == [10, 100, 1000]
    assert grid(job, ["hash", "cafe"], [10.0]) == (["hash", "cafe"], [10.0])


@pytest.mark.parametrize("methods,ratios,message", [
    (["hash", "nope"], [10.0], "unknown method(s) nope"),
    (["hash"], [0.5], "must be ≥ 1"),
    (None, [10.0], "needs methods and ratios"),
])
def test_a_bad_grid_is_refused_before_anything_runs(tmp_path, methods, ratios, message):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("data: {path: nowhere}\n")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        grid(load_config(cfg), methods, ratios)


def test_a_sweep_section_with_an_unknown_method_names_the_key(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("data: {path: nowhere}\nsweep: {methods: [hash, hsah], ratios: [10]}\n")
    with pytest.raises(ConfigError, match="sweep.*unknown method.*hsah"):
        load_config(cfg)


@pytest.mark.slow
def test_three_methods_by_two_ratios_make_six_tracked_runs_a_table_and_a_plot(
        ray_cluster, tiny_synth, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {tiny_synth}}}\ntrain: {{batch_size: 256, max_steps: 40}}\n"
                   f"mlflow: {{tracking_uri: '{uri}', experiment: sweep-test}}\n"
                   f"ray: {{storage_path: '{tmp_path / 'runs'}'}}\n")
    plot, out = tmp_path / "auc.png", tmp_path / "sweep.json"
    rc = main(["sweep", "--config", str(cfg), "--methods", "hash,qr,cafe", "--ratios", "10,100",
               "--name", "grid", "--num-workers", "1", "--plot", str(plot), "--output-json", str(out)])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()  # worker logs come first; the table is last
    start = max(i for i, line in enumerate(lines) if line.split()[:2] == ["run", "method"])
    rows = [line.split() for line in lines[start + 2:]]
    assert len(rows) == 6 and all(r[-1] == "FINISHED" for r in rows)
    assert sorted((r[1], round(float(r[3]), -1)) for r in rows) == sorted(
        (m, r) for m in ("cafe", "hash", "qr") for r in (10, 100))  # achieved ratios, within 5 of requested
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([exp.experiment_id], "tags.sweep = 'grid'")
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    assert {(r.data.tags["method"], r.data.params["embedding.compression_ratio"]) for r in runs} == {
        (m, r) for m in ("hash", "qr", "cafe") for r in ("10.0", "100.0")}
    result = json.loads(out.read_text())
    assert result["failed"] == 0 and len(result["table"]) == 6 and result["plot"] == str(plot)
    assert plot.read_bytes()[:4] == b"\x89PNG" and plot.stat().st_size > 10_000


def _small_job(tmp_path, data, experiment: str, steps: int, ray: str = "") -> tuple[str, str]:
    """(MLflow URI, job file) of a short job on ``data`` with its own store and runs directory."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {data}}}\ntrain: {{batch_size: 256, max_steps: {steps}}}\n"
                   f"mlflow: {{tracking_uri: '{uri}', experiment: {experiment}}}\n"
                   f"ray: {{storage_path: '{tmp_path / 'runs'}'{', ' + ray if ray else ''}}}\n")
    return uri, str(cfg)


@pytest.mark.slow
def test_two_cells_run_at_once_as_tune_trials_under_one_parent_run(ray_cluster, tiny_synth, tmp_path):
    """--concurrency 2 on this machine (one 1-CPU worker per cell): both cells' MLflow runs are open
    at the same time, each a child of the sweep's parent run, which holds the table and the plot."""
    uri, cfg = _small_job(tmp_path, tiny_synth, "tune-test", steps=80)
    out = tmp_path / "sweep.json"
    rc = main(["sweep", "--config", cfg, "--methods", "hash,cafe", "--ratios", "100", "--name", "side",
               "--num-workers", "1", "--concurrency", "2", "-o", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["concurrency"] == 2 and result["failed"] == 0 and len(result["runs"]) == 2
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tune-test")
    cells = client.search_runs([exp.experiment_id], "tags.sweep = 'side'")
    (parent,) = client.search_runs([exp.experiment_id], "tags.sweep_parent = 'side'")
    assert parent.info.run_id == result["parent_run_id"] and parent.info.status == "FINISHED"
    assert len(cells) == 2 and {r.data.tags["mlflow.parentRunId"] for r in cells} == {parent.info.run_id}
    a, b = sorted(cells, key=lambda r: r.info.start_time)
    assert b.info.start_time < a.info.end_time  # the second started before the first ended: side by side
    artifacts = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"table.md", "sweep.json", "plots"} <= artifacts
    assert [f.path for f in client.list_artifacts(parent.info.run_id, "plots")] == ["plots/auc_vs_ratio.png"]


@pytest.mark.slow
def test_a_cell_that_fails_is_reported_and_the_others_finish(ray_cluster, tiny_synth, tmp_path, capsys):
    """A ratio hashing cannot reach fails its trial (after ray.max_failures retries); the sweep
    reports it with the error, finishes the other cell and exits 1."""
    uri, cfg = _small_job(tmp_path, tiny_synth, "fail-test", steps=20, ray="max_failures: 1")
    out = tmp_path / "sweep.json"
    rc = main(["sweep", "--config", cfg, "--methods", "hash", "--ratios", "100,1000000000", "--name", "bad",
               "--num-workers", "1", "-o", str(out)])
    assert rc == 1
    runs = {r["ratio"]: r for r in json.loads(out.read_text())["runs"]}
    assert runs[100.0]["status"] == "FINISHED" and runs[1e9]["status"] == "FAILED"
    assert "1000000000" in runs[1e9]["error"] or "1e+09" in runs[1e9]["error"], runs[1e9]["error"]
    assert "failed" in capsys.readouterr().err
