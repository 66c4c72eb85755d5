"""Shared fixtures: real data files, a real local Ray cluster, tiny synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CRITEO_SAMPLE = SHARED_DATA / "criteo_kaggle_train_head10k_wideresdnn.tsv"
AVAZU_SAMPLE = SHARED_DATA / "avazu_train_head10k_wideresdnn.csv"


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real sample {path} not present (it lives in ../shared/data)")
    return path


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
