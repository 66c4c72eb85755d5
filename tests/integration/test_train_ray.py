"""Real Ray Train runs: local cluster, TorchRec DMP with table-wise sharding over gloo."""

import json

import pytest

from cafe_dist.cli import main
from cafe_dist.config import load_config
from cafe_dist.train.launcher import run_training

OUTPUT_KEYS = {"auc", "logloss", "samples_per_sec", "steps", "world_size", "method", "compression_ratio",
               "embedding_bytes", "full_embedding_bytes"}


def _job(tmp_path, data, workers, extra=()):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {data}}}\n")
    return load_config(cfg, [f"ray.num_workers={workers}", "train.batch_size=256", "train.max_steps=60",
                             "train.log_every=20", f"ray.storage_path={tmp_path / 'runs'}", *extra])


@pytest.mark.slow  # two-worker runs: test_methods_ray[cafe], test_tracking
def test_two_worker_training(ray_cluster, tiny_synth, tmp_path):
    out_path = tmp_path / "out.json"
    out = run_training(_job(tmp_path, tiny_synth, 2), out_path)
    assert OUTPUT_KEYS <= set(json.loads(out_path.read_text()))
    assert out.world_size == 2 and out.steps == 60
    assert out.auc > 0.6, out
    assert 0 < out.logloss < 0.69
    # full pays for its list of values (8 B a value) on top of the uncompressed tables
    assert out.embedding_bytes > out.full_embedding_bytes and out.compression_ratio < 1.0


@pytest.mark.slow  # one more Ray Train start-up (~60 s) for a stopping rule
def test_training_stops_at_the_first_evaluation_reaching_the_target_auc(ray_cluster, tiny_synth, tmp_path):
    """Evaluations at 10, 20, ...; an easy target is reached at the first one, which is the final result."""
    out = run_training(_job(tmp_path, tiny_synth, 1, ["train.eval_every=10", "train.target_auc=0.51",
                                                      "mlflow.enabled=false"]))
    assert out.steps == 10 and out.stats["target_auc_reached_at_step"] == 10 and out.auc >= 0.51


@pytest.mark.slow  # the CLI path: test_methods_ray, test_plugins
def test_one_worker_training_via_cli(ray_cluster, tiny_synth, tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {tiny_synth}}}\ntrain: {{batch_size: 256, max_steps: 60}}\n"
                   f"ray: {{storage_path: {tmp_path / 'runs'}}}\n")
    rc = main(["train", "--config", str(cfg), "--num-workers", "1", "--output-json", str(tmp_path / "o.json")])
    assert rc == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["world_size"] == 1 and out["auc"] > 0.6


def test_missing_data_path_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {tmp_path / 'nothing'}}}\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "holds no converted dataset" in capsys.readouterr().err


def test_row_wise_on_cpu_is_refused(tmp_path):
    import torch

    from cafe_dist.train.sharding import make_plan

    with pytest.raises(ValueError, match="row_wise.*need GPU workers"):
        make_plan(None, [], torch.device("cpu"), 1, 1, 8, ["row_wise"])


@pytest.mark.slow  # one epoch of real rows (~75 s); real rows are converted and checked in tests/unit/test_data_criteo.py
def test_real_criteo_sample_trains_to_a_sane_auc(ray_cluster, tmp_path):
    """1 epoch over 8.5k real Criteo rows: a DLRM reaches ~0.75 AUC (0.5 would mean nothing learned)."""
    from conftest import CRITEO_SAMPLE, need

    from cafe_dist.data.formats.criteo import convert_criteo

    convert_criteo([str(need(CRITEO_SAMPLE))], tmp_path / "criteo", progress=False)
    job = _job(tmp_path, tmp_path / "criteo", 1,
               ["train.batch_size=64", "train.max_steps=null", "train.lr=0.02"])
    out = run_training(job)
    assert out.auc > 0.70, out
    assert out.logloss < 0.52, out
