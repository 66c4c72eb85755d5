"""A team's tracking server, as the cluster files set it up: ``mlflow server`` over a PostgreSQL store
(Debian's PostgreSQL, started here on a loopback port) with artifacts on (shared) storage. A real
training run logs into it through the server; the server is then stopped and started again on the
same database (what a cluster's ``ray down`` / ``ray up`` does to the head) and the run is all there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from dmp_helpers import free_port, http_service
from mlflow.tracking import MlflowClient

from cafe_dist.config import load_config
from cafe_dist.train.launcher import run_training


def _pg_bin() -> Path | None:
    """Debian's PostgreSQL binaries: on PATH, or the newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    return versions[-1] if versions else None


def _as_postgres(args: list[str], **kw) -> subprocess.CompletedProcess:
    """PostgreSQL refuses to run as root: then the tools run as the ``postgres`` user."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    done = subprocess.run(args, capture_output=True, text=True, **kw)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster in a temporary directory on a free loopback port, with a database ``mlflow``."""
    pg = _pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    # not under pytest's temporary folders: they are private to this user, and the server may run as another
    root = Path(tempfile.mkdtemp(prefix="cafe-dist-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    _as_postgres([str(pg / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    _as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-l", str(root / "pg.log"), "-w", "start", "-o",
                  f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"])
    try:
        import psycopg  # the driver MLflow's server uses for this store

        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE mlflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        _as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def _server(db_uri: str, artifacts: Path, port: int):
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    return http_service([str(mlflow_bin), "server", "--backend-store-uri", db_uri, "--artifacts-destination",
                         str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                        f"http://127.0.0.1:{port}/health")


@pytest.mark.slow  # PostgreSQL, two server starts and a training run (~1.5 min)
def test_a_run_tracked_through_a_postgres_backed_server_survives_a_server_restart(postgres, ray_cluster,
                                                                                tiny_synth, tmp_path):
    artifacts, port = tmp_path / "shared" / "mlflow-artifacts", free_port()
    uri = f"http://127.0.0.1:{port}"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {tiny_synth}}}\n")
    job = load_config(cfg, ["embedding.method=cafe", "embedding.compression_ratio=100", "train.batch_size=256",
                            "train.max_steps=30", "train.log_every=10", f"mlflow.tracking_uri={uri}",
                            "mlflow.experiment=team", f"ray.storage_path={tmp_path / 'runs'}"])
    with _server(postgres, artifacts, port):
        out = run_training(job)
    assert out.mlflow_run_id
    with _server(postgres, artifacts, port):  # the head came back: a new server, the same database
        run = MlflowClient(uri).get_run(out.mlflow_run_id)
        assert run.info.status == "FINISHED"
        assert run.data.metrics["final_auc"] == pytest.approx(out.auc)
        assert run.data.params["embedding.method"] == "cafe"
        history = MlflowClient(uri).get_metric_history(out.mlflow_run_id, "loss")
        assert [m.step for m in history] == [10, 20, 30]
        artifacts_listed = {a.path for a in MlflowClient(uri).list_artifacts(out.mlflow_run_id)}
    assert "sharding_plan.txt" in artifacts_listed
    assert any(artifacts.rglob("sharding_plan.txt"))  # proxied into the artifact location on shared storage
