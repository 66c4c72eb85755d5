"""``cafe-dist submit | status | logs | stop``: training jobs on a Ray cluster via the Ray Jobs SDK.

``submit`` uploads the working directory (code and job specs, not data, runs or the venv) as the
job's runtime env, runs ``python -m cafe_dist.cli train --config JOB.yaml`` on the head node (so
the uploaded code is what runs), passes ``MLFLOW_TRACKING_URI`` and any ``--env`` through, and
with ``--wait`` streams the job's logs and exits with its status.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

from cafe_dist.config import ConfigError, load_config

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# never uploaded: environments, data, outputs, stores (the 500 MB runtime-env limit is easy to hit).
# Ray reads these as .gitignore patterns: a leading "/" anchors one to the working directory's root,
# so "/data/" drops the checkout's data folder but not the package's own cafe_dist/data/.
EXCLUDES = ["/.venv/", "/venv/", "/.git/", "/data/", "/runs/", "/mlruns/", "/mlartifacts/", "/.whl/", "/.gl/",
            "*.db", "*.parquet", "__pycache__/", ".pytest_cache/", ".ruff_cache/", "/out*.json", "*.egg-info/"]
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}


def address_or_default(address: str | None) -> str:
    return address or os.environ.get("RAY_JOBS_ADDRESS") or DEFAULT_ADDRESS


def auth_headers() -> dict[str, str] | None:
    """Clusters started by ``ray start`` require a token (Ray's token auth); send the one Ray keeps
    for this user (``$RAY_AUTH_TOKEN``, the file at ``$RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``)."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
        token = path.read_text().strip() if path.is_file() else None
    return {"Authorization": f"Bearer {token}"} if token else None


def _client(address: str | None):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    addr = address_or_default(address)
    try:
        return JobSubmissionClient(addr, headers=auth_headers())
    except AuthenticationError:
        raise ConnectionError(f"the Ray cluster at {addr} wants an auth token: put the cluster's token in "
                              "$RAY_AUTH_TOKEN or ~/.ray/auth_token (`ray get-auth-token` on the head)") from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConnectionError(f"cannot reach the Ray Jobs API at {addr} ({e}); start a cluster "
                              "(cluster/local_cluster.sh start, or ray up) or pass --address http://HEAD:8265") from None


def build_entrypoint(job_file: str, num_workers: int | None, overrides: list[str]) -> str:
    args = ["python", "-m", "cafe_dist.cli", "train", "--config", job_file]
    if num_workers is not None:
        args += ["--num-workers", str(num_workers)]
    for o in overrides:
        args += ["--set", o]
    return shlex.join(args)


def submit(job_file: str, address: str | None = None, num_workers: int | None = None,
           overrides: list[str] | None = None, env: dict[str, str] | None = None,
           working_dir: str | Path = ".", tracking_uri: str | None = None, submission_id: str | None = None,
           ) -> str:
    """Validate the job spec here (a typo fails now, not on the cluster), then submit it."""
    overrides = list(overrides or [])
    job = load_config(job_file, overrides + ([f"ray.num_workers={num_workers}"] if num_workers else []))
    wd = Path(working_dir).resolve()
    try:
        rel = Path(job_file).resolve().relative_to(wd)
    except ValueError:
        raise ConfigError(f"{job_file} is outside the working directory {wd} that is uploaded; put the job "
                          "spec under it (e.g. jobs/)") from None
    env_vars = dict(env or {})
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or job.mlflow.tracking_uri
    if uri:
        env_vars["MLFLOW_TRACKING_URI"] = uri
    runtime_env = {"working_dir": str(wd), "excludes": EXCLUDES, "env_vars": env_vars}
    client = _client(address)
    deadline = time.time() + 120
    while True:
        try:
            return client.submit_job(entrypoint=build_entrypoint(str(rel), num_workers, overrides),
                                     runtime_env=runtime_env, submission_id=submission_id,
                                     metadata={"job_file": str(rel), "method": job.embedding.method,
                                               "compression_ratio": str(job.embedding.compression_ratio)})
        except RuntimeError as e:  # a head that just started has no job agent for a few seconds
            if "No available agent" not in str(e) or time.time() > deadline:
                raise
            time.sleep(2)


def follow(job_id: str, address: str | None = None, out=None) -> str:
    """Stream the job's logs (to stdout by default) until it ends; returns its final status."""
    client = _client(address)
    out = out or sys.stdout

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    for _ in range(60):  # the log stream closes as the job ends; its status may lag a moment
        status = str(client.get_job_status(job_id).value)
        if status in EXIT_CODES:
            return status
        time.sleep(1)
    return status


def status(job_id: str, address: str | None = None) -> dict:
    info = _client(address).get_job_info(job_id)
    return {"job_id": job_id, "status": str(info.status.value), "message": info.message,
            "entrypoint": info.entrypoint, "start_time": info.start_time, "end_time": info.end_time}


def list_jobs(address: str | None = None) -> list[dict]:
    return [{"job_id": j.submission_id, "status": str(j.status.value), "entrypoint": j.entrypoint}
            for j in _client(address).list_jobs()]


def logs(job_id: str, address: str | None = None) -> str:
    return _client(address).get_job_logs(job_id)


def stop(job_id: str, address: str | None = None, wait_s: float = 60.0) -> str:
    """Ask the job to stop and wait until it has; returns its final status."""
    client = _client(address)
    client.stop_job(job_id)
    deadline = time.time() + wait_s
    while time.time() < deadline:
        s = str(client.get_job_status(job_id).value)
        if s in EXIT_CODES:
            return s
        time.sleep(0.5)
    return str(client.get_job_status(job_id).value)
