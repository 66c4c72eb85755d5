"""What ``make demo`` prints on a fresh clone (issue 36): at most 40 lines on a successful run, none of
them a library's (Ray's token-authentication warning, its core worker's and raylet's lines, MLflow's
store creation, tracebacks). ``make`` adds one line to the demo's own: setup's "building .venv"."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRARY = re.compile(r"WARNING|ERROR|core_worker|raylet|Traceback|TrainController|PreemptionWatcher|"
                     r"authentication|UserWarning|DeprecationWarning|torchrec|fbgemm", re.IGNORECASE)


@pytest.mark.slow
def test_the_demo_prints_at_most_40_lines_none_from_a_library(ray_cluster, tmp_path):
    """With another Ray instance on the machine (this session's): Ray Train's placement-group
    cleaner, which looks for "the" cluster, printed a traceback per run then."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    done = subprocess.run([str(Path(sys.executable).parent / "cafe-dist"), "demo", "--config",
                           str(REPO / "jobs" / "demo.yaml"), "--num-workers", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    lines = (done.stdout + done.stderr).rstrip("\n").split("\n")  # as a terminal shows them (a bar redraws with \\r)
    assert done.returncode == 0, "\n".join(lines[-30:])
    assert len(lines) <= 40 - 1, "\n".join(lines)  # and setup's one line
    assert not [line for line in lines if LIBRARY.search(line)], "\n".join(lines)
    assert any("CAFE - hash" in line for line in lines)
