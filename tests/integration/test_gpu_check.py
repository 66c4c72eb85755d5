"""scripts/gpu-check.sh: nobody can run it here (no GPU), so its syntax, its refusals and its CPU
fallback (--dry-run, the same code path at toy sizes) are what is tested."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = "scripts/gpu-check.sh"


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, **kw)


def test_the_script_parses_and_explains_itself():
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0
    helped = _run("--help")
    assert helped.returncode == 0 and "--dry-run" in helped.stdout and "gpu-check.json" in helped.stdout
    wrong = _run("--bogus")
    assert wrong.returncode == 2 and "unknown argument --bogus" in wrong.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine runs the real check")
def test_without_a_gpu_it_refuses_and_points_at_the_dry_run():
    out = _run("--out", "/nonexistent")
    assert out.returncode == 2 and "--dry-run" in out.stderr
    py = subprocess.run([sys.executable, "-m", "cafe_dist.bench.gpucheck", "--out", "/tmp/gpu-check-refused"],
                        capture_output=True, text=True)
    assert py.returncode == 2 and "no CUDA device" in py.stderr


@pytest.mark.slow
def test_the_dry_run_writes_every_part_of_the_report(tmp_path):
    sample = tmp_path / "sample.tsv"  # 3,000 rows in Criteo's format stand in for the 100k sample
    rng = np.random.default_rng(0)
    with open(sample, "w") as f:
        for _ in range(3000):
            cats = [f"{int(v):08x}" for v in rng.zipf(1.3, 26) % 5000]
            f.write("\t".join([str(int(rng.random() < 0.25)), *map(str, rng.integers(0, 50, 13)), *cats]) + "\n")
    out = _run("--dry-run", "--out", str(tmp_path / "out"), "--data", str(sample), env={**os.environ, "LIMIT_S": "1500"})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert report["dry_run"] and report["environment"]["device"] == "cpu"
    assert [(r["method"], r["pipelined"]) for r in report["train"]] == [
        ("full", True), ("hash", True), ("cafe", True), ("cafe", False)]  # the pipeline, forced on the CPU
    assert all(r["steps"] == 20 and 0.5 < r["auc"] < 1 for r in report["train"])
    assert report["pipeline_speedup"] > 0
    assert report["sketch"]["insert_mids_per_s"] > 0 and report["sketch"]["device"] == "cpu"
    assert "runs" in report["quality"] or "skipped" in report["quality"]


def test_the_core_check_runs_without_torchrec_ray_or_mlflow(tmp_path):
    """``--core --dry-run`` on the CPU with the venv's Python, where TorchRec, fbgemm, Ray and MLflow are
    installed but made unimportable: every part is measured and none of them was imported."""
    out = tmp_path / "core"
    r = _run("--core", "--dry-run", "--out", str(out), env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "gpu-core.json").read_text())
    assert report["dry_run"] is True and report["forbidden_imported"] == []
    assert report["sketch_insert"]["ids_per_s"] > 0
    for batch in ("256", "1024"):
        assert report["hashing"][batch]["ids_per_s"] > 0
        cafe = report["cafe"][batch]
        assert cafe["remap_ids_per_s"] > 0 and cafe["scoring_ids_per_s"] > 0 and cafe["hot_keys"] > 0
        assert report["feeding"][batch]["rows_per_s"] > 0
        step = report["dlrm_step"][batch]
        assert step["over_h200"] == pytest.approx(step["samples_per_s"] / report["h200_samples_per_s"])
    # the guard is real: the same module asked to import one of them fails
    blocked = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torchrec'] = None; import torchrec"],
                             capture_output=True, text=True)
    assert blocked.returncode != 0 and "import of torchrec halted" in blocked.stderr
