"""Shared fixtures: real data files, a real local Ray cluster, tiny synthetic datasets."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CRITEO_SAMPLE = SHARED_DATA / "criteo_kaggle_train_head10k_wideresdnn.tsv"
AVAZU_SAMPLE = SHARED_DATA / "avazu_train_head10k_wideresdnn.csv"


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real sample {path} not present (it lives in ../shared/data)")
    return path


@contextmanager
def tmpfs(where: Path, size: str, *options: str):
    """A real small (``size``) or read-only (``"ro"``) file system at ``where`` for the test's time."""
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    """Runs started by tests are tracked in a throwaway sqlite store, not the checkout's mlflow.db."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the whole session (starting one costs ~10 s)."""
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(num_cpus=4, log_to_driver=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    from cafe_dist.data.synth import SynthSpec, generate_synthetic

    out = tmp_path_factory.mktemp("synth") / "tiny"
    generate_synthetic(out, SynthSpec(rows=40_000, seed=3, cardinality_scale=0.001), progress=False)
    return out


@pytest.fixture(scope="session")
def tracked(ray_cluster, tiny_synth, tmp_path_factory):
    """One real 2-worker CAFE run tracked in its own sqlite store, its model logged: (uri, result, path of
    the output JSON). test_tracking reads the run, test_serving its model."""
    from cafe_dist.config import load_config
    from cafe_dist.train.launcher import run_training

    tmp = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = tmp / "job.yaml"
    cfg.write_text(f"data: {{path: {tiny_synth}}}\n")
    job = load_config(cfg, ["ray.num_workers=2", "train.batch_size=256", "train.max_steps=60", "train.log_every=20",
                            "train.eval_every=30", "embedding.method=cafe", "embedding.compression_ratio=100",
                            "cafe.threshold=20", f"mlflow.tracking_uri={uri}", "mlflow.experiment=test-exp",
                            "ray.name=tracked-cafe", f"ray.storage_path={tmp / 'runs'}"])
    out_path = tmp / "out.json"
    out = run_training(job, out_path)
    return uri, out, out_path
