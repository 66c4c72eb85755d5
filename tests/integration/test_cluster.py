"""The cluster path on one machine: a real Ray cluster from ``ray start --head`` on loopback, jobs
submitted through the Ray Jobs API by ``cafe-dist job submit``, tracked in a real MLflow store; and the
cluster configs and Dockerfiles checked by the tools their users would run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from dmp_helpers import free_port
from mlflow.tracking import MlflowClient

from cafe_dist.cli import main
from cafe_dist.submit import auth_headers

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _python_without_the_package(where: Path) -> Path:
    """A venv that sees every installed package except this one: the project's site-packages is on
    its path through a plain path line, so the editable install's finder (a .pth hook) never runs.
    A job on a head started with it can only import cafe_dist from the uploaded working directory,
    as on a real cluster whose image does not have the package."""
    import site

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    (pure,) = Path(where, "lib").glob("python3*/site-packages")
    (pure / "project-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = where / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import ray, torch, cafe_dist"], capture_output=True, text=True,
                           cwd=where)
    assert "No module named 'cafe_dist'" in probe.stderr, probe.stderr  # ray and torch are there, we are not
    return python


def test_the_uploaded_working_dir_holds_every_module_of_the_package():
    """The upload's zip, built by Ray's own packaging with our excludes, has every module of the package
    (an unanchored 'data/' used to drop cafe_dist/data/) and none of the checkout's data or venv."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    from cafe_dist.submit import EXCLUDES

    zip_path = Path(tempfile.mkdtemp()) / "upload.zip"
    create_package(str(REPO), zip_path, include_gitignore=True, excludes=EXCLUDES)
    names = set(zipfile.ZipFile(zip_path).namelist())
    modules = {str(p.relative_to(REPO)) for p in (REPO / "cafe_dist").rglob("*.py") if "__pycache__" not in p.parts}
    assert len(modules) > 30 and modules <= names, sorted(modules - names)
    assert {"cafe_dist/data/__init__.py", "cafe_dist/data/formats/criteo.py", "jobs/demo.yaml"} <= names
    assert not any(n.startswith((".venv/", ".git/", "runs/")) or n.endswith((".db", ".parquet")) for n in names)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """``ray start --head --block`` on 127.0.0.1 in its own process group: stopping it stops only this
    cluster (``ray stop`` would stop every Ray on the machine, the test session's included). Its Python
    has no editable install of cafe_dist: jobs run the code they upload."""
    from ray.job_submission import JobSubmissionClient

    tmp = tmp_path_factory.mktemp("head")
    python = _python_without_the_package(tmp / "venv")
    port, dash = free_port(), free_port()
    # every port a node listens on is picked free, so this cluster coexists with the session's own
    ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
        "ray-client-server-port", "node-manager-port", "object-manager-port")]
    env = {**os.environ, "PATH": f"{python.parent}:{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(
        [str(python), "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=4", "--include-dashboard=true",
         f"--temp-dir={tmp / 'ray'}", *ports],
        env=env, stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 180
    while True:
        try:
            JobSubmissionClient(address, headers=auth_headers()).list_jobs()
            break
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray head did not come up:\n{(tmp / 'head.log').read_text()[-3000:]}") from None
            time.sleep(1)
    yield address
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _overrides(data, tmp):
    return ["--set", f"data.path={data}", "--set", "train.batch_size=256", "--set", "train.log_every=10",
            "--set", f"ray.storage_path={tmp / 'runs'}", "--set", "ray.name=submitted"]


@pytest.mark.slow  # a local cluster and a whole demo job (~2.5 min); the upload itself: test_the_uploaded_working_dir_holds_every_module_of_the_package
def test_submit_wait_runs_the_demo_job_on_the_cluster_and_tracks_it(head, tiny_synth, tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.chdir(REPO)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = main(["job", "submit", "--config", "jobs/demo.yaml", "--address", head, "--num-workers", "2", "--wait", "--tracking-uri", uri,
               *_overrides(tiny_synth, tmp_path), "--set", "train.max_steps=20"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    job_id = out.splitlines()[0].strip()
    assert "[cafe-dist] done: steps 20" in out  # the job's own log lines, streamed
    info = json.loads(_run_cli(capsys, ["job", "status", job_id, "--address", head]))
    assert info["status"] == "SUCCEEDED" and "cafe_dist.cli train --config jobs/demo.yaml" in info["entrypoint"]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cafe-dist").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2" and run.data.metrics["final_steps"] == 20


@pytest.mark.slow  # the cluster of the test above (its start-up: ~1 min)
def test_a_job_whose_workers_would_take_every_cpu_is_refused_with_the_numbers(head, tiny_synth, tmp_path,
                                                                             monkeypatch, capsys):
    """Was: a worker waiting forever for a CPU the head does not have."""
    monkeypatch.chdir(REPO)
    t0 = time.time()
    rc = main(["submit", "jobs/demo.yaml", "--address", head, "--num-workers", "5", "--wait",
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *_overrides(tiny_synth, tmp_path)])
    out = capsys.readouterr().out
    assert rc != 0 and time.time() - t0 < 300
    assert "ray.num_workers=5 needs 5 CPUs (5 for the workers at ray.cpus_per_worker=1) but the Ray cluster has 4" in out, \
        out[-3000:]


@pytest.mark.slow  # a full training run each (default run: 15 min on 2 cores)
def test_stop_stops_a_running_submission(head, tiny_synth, tmp_path, monkeypatch, capsys):
    from ray.job_submission import JobSubmissionClient

    monkeypatch.chdir(REPO)
    assert main(["submit", "jobs/demo.yaml", "--address", head, "--num-workers", "1",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *_overrides(tiny_synth, tmp_path),
                 "--set", "train.epochs=1000"]) == 0
    job_id = capsys.readouterr().out.strip().splitlines()[-1]
    client = JobSubmissionClient(head, headers=auth_headers())
    deadline = time.time() + 120
    while str(client.get_job_status(job_id).value) != "RUNNING":
        assert time.time() < deadline, client.get_job_logs(job_id)[-2000:]
        time.sleep(1)
    assert main(["job", "stop", job_id, "--address", head]) == 0
    assert f"job {job_id}: STOPPED" in capsys.readouterr().out
    assert str(client.get_job_status(job_id).value) == "STOPPED"


def test_submit_refuses_a_bad_job_spec_before_it_reaches_the_cluster(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["submit", "jobs/demo.yaml", "--address", "http://127.0.0.1:9", "--set", "train.btach_size=3"]) == 2
    assert "config key 'train.btach_size' is not a known key" in capsys.readouterr().err


def test_submit_names_the_address_it_cannot_reach(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    port = free_port()  # nothing listens there
    assert main(["submit", "jobs/demo.yaml", "--address", f"http://127.0.0.1:{port}"]) == 2
    assert f"cannot reach the Ray Jobs API at http://127.0.0.1:{port}" in capsys.readouterr().err


def _run_cli(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


def test_the_cluster_launcher_config_passes_rays_own_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster" / "ray-cluster-gpu.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["docker"]["image"].startswith("cafe-dist-gpu")
    assert any("mlflow server" in c for c in config["head_start_ray_commands"])
    config["head_node_typo"] = "head"
    with pytest.raises(Exception, match="head_node_typo"):
        validate_config(prepare_config(config))


def test_both_dockerfiles_pass_hadolint():
    for name in ("Dockerfile.cpu", "Dockerfile.gpu"):
        r = subprocess.run([str(BIN / "hadolint"), str(REPO / "docker" / name)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    gpu = (REPO / "docker" / "Dockerfile.gpu").read_text()
    assert "FROM rayproject/ray:2.60.0-py311-cu12x" in gpu
    assert "fbgemm-gpu==1.8.0" in gpu and '--no-deps "torchrec==1.8.0"' in gpu


QUANTITY = r"^\d+(\.\d+)?(m|Ki|Mi|Gi|Ti)?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _check_pod_template(template: dict, where: str) -> list[dict]:
    import re

    spec = template["spec"]
    containers = spec["containers"]
    assert containers, f"{where}: no containers"
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for c in containers:
        assert re.match(DNS_LABEL, c["name"]) and c["image"], f"{where}: container {c}"
        for kind in ("requests", "limits"):
            for res, qty in c.get("resources", {}).get(kind, {}).items():
                assert re.match(QUANTITY, str(qty)), f"{where}/{c['name']}: {kind}.{res}={qty!r}"
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{where}/{c['name']}: mount of undeclared volume {m['name']}"
    return containers


def test_the_kuberay_manifests_hold_what_the_ray_io_v1_crds_require():
    """A structural check of the KubeRay v1 CRD fields (no CRD schemas are available offline)."""
    cluster = yaml.safe_load((REPO / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec, name = cluster["spec"], cluster["metadata"]["name"]
    assert spec["rayVersion"] == "2.60.0"
    head = spec["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # the CRD types them as strings
    head_containers = _check_pod_template(head["template"], "head")
    assert 5000 in {p["containerPort"] for p in head_containers[0]["ports"]}  # MLflow via <name>-head-svc
    assert any(c["command"][:2] == ["mlflow", "server"] for c in head_containers[1:])
    (group,) = spec["workerGroupSpecs"]
    assert group["groupName"] and 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    (worker,) = _check_pod_template(group["template"], "gpu workers")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "8"
    images = {c["image"] for c in head_containers + [worker]}
    launcher = yaml.safe_load((REPO / "cluster" / "ray-cluster-gpu.yaml").read_text())
    assert images == {launcher["docker"]["image"]}  # one image, built from docker/Dockerfile.gpu

    job = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": name}
    entry = job["spec"]["entrypoint"].split()
    assert entry[:4] == ["python", "-m", "cafe_dist.cli", "train"]
    workdir = "/home/ray/cafe-dist/"
    assert f"WORKDIR {workdir.rstrip('/')}" in (REPO / "docker" / "Dockerfile.gpu").read_text()
    config = entry[entry.index("--config") + 1]
    assert config.startswith(workdir) and (REPO / config[len(workdir):]).is_file()
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == f"http://{name}-head-svc:5000"

    # the claim every pod mounts is a manifest of its own, ReadWriteMany (many nodes write checkpoints)
    claims = {v["persistentVolumeClaim"]["claimName"] for t in (head["template"], group["template"])
              for v in t["spec"]["volumes"] if "persistentVolumeClaim" in v}
    pvc = yaml.safe_load((REPO / "cluster" / "kuberay" / "shared-storage.yaml").read_text())
    assert (pvc["apiVersion"], pvc["kind"]) == ("v1", "PersistentVolumeClaim")
    assert claims == {pvc["metadata"]["name"]} and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert re.match(QUANTITY, pvc["spec"]["resources"]["requests"]["storage"])
    # MLflow's store is PostgreSQL, its URI from the database's secret, not a file on the shared volume
    db = list(yaml.safe_load_all((REPO / "cluster" / "kuberay" / "mlflow-db.yaml").read_text()))
    secret = next(d for d in db if d["kind"] == "Secret")
    (server,) = [c for c in head_containers if c.get("command", [])[:2] == ["mlflow", "server"]]
    store = server["command"][server["command"].index("--backend-store-uri") + 1]
    (var,) = [e for e in server["env"] if f"$({e['name']})" == store]
    ref = var["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and secret["stringData"][ref["key"]].startswith("postgresql://")
    service = next(d for d in db if d["kind"] == "Service")
    assert f"@{service['metadata']['name']}:5432/" in secret["stringData"][ref["key"]]
    launcher_store = " ".join(launcher["head_start_ray_commands"])
    assert "--backend-store-uri postgresql://" in launcher_store and "/mnt/shared" in launcher_store


@pytest.mark.slow  # a full training run each (default run: 15 min on 2 cores)
def test_training_reads_the_dataset_through_a_pyarrow_filesystem_uri(ray_cluster, tiny_synth, tmp_path):
    """data.path may be any URI pyarrow reads (s3://, gs://, hdfs://, file://): meta.json, the schema
    check and Ray Data's Parquet reads all go through pyarrow's filesystem layer; file:// exercises it."""
    from cafe_dist.config import load_config
    from cafe_dist.train.launcher import run_training

    uri = f"file://{tiny_synth}"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: '{uri}'}}\n")
    job = load_config(cfg, ["train.batch_size=256", "train.max_steps=10", "embedding.method=hash",
                            "embedding.compression_ratio=10", "mlflow.enabled=false",
                            f"ray.storage_path={tmp_path / 'runs'}"])
    out = run_training(job)
    assert out.data_path == uri and out.steps == 10 and out.eval_rows > 0
    missing = load_config(cfg, [f"data.path={uri}/nope", "mlflow.enabled=false"])
    with pytest.raises(FileNotFoundError, match=r"data.path file://.*/nope holds no converted dataset"):
        run_training(missing)


@pytest.mark.slow  # a two-node cluster up and down (~40 s)
def test_local_cluster_script_uses_free_ports_and_stops_only_its_own_nodes(ray_cluster, tmp_path):
    """Beside the test session's own Ray (another cluster on this machine): the script's nodes come up
    on ports of their own, its jobs API answers, and `stop` ends them and leaves the session's Ray."""
    import ray
    from ray.job_submission import JobSubmissionClient

    from cafe_dist.submit import auth_headers

    env = {**os.environ, "STATE_DIR": str(tmp_path / "state"), "RAY": str(BIN / "ray"), "HEAD_CPUS": "1",
           "WORKER_CPUS": "1"}
    script = str(REPO / "cluster" / "local_cluster.sh")
    up = subprocess.run(["bash", script, "start", "1"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        exported = (tmp_path / "state" / "cluster.env").read_text()
        address = exported.split("RAY_JOBS_ADDRESS=")[1].split()[0]
        assert address != "http://127.0.0.1:8265"  # not the fixed port another cluster may hold
        assert JobSubmissionClient(address, headers=auth_headers()).list_jobs() == []
        pids = [int(p) for p in (tmp_path / "state" / "pids").read_text().split()]
        assert len(pids) == 2
    finally:
        down = subprocess.run(["bash", script, "stop"], env=env, capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    for pid in pids:  # every process of its nodes is gone
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert ray.cluster_resources().get("CPU", 0) > 0  # the session's cluster is still up
