#!/usr/bin/env bash
# The GPU check: run once on a machine with an NVIDIA GPU, then put its figures in BENCHMARKS.md.
#
#   bash scripts/gpu-check.sh [--out DIR] [--data SAMPLE.tsv] [--wheels DIR]   # on the GPU machine
#   bash scripts/gpu-check.sh --dry-run [--out DIR]                           # CPU, toy sizes (CI)
#   bash scripts/gpu-check.sh --core [--dry-run] [--out DIR]                  # a bare GPU machine
#
# --core needs only $PYTHON (default python3) with torch, numpy, pyarrow and numba: no venv, no
# network, and TorchRec, fbgemm, Ray and MLflow are made unimportable for it. In a few minutes on one
# GPU (python -m cafe_dist.bench.gpu_core) it times the HotSketch tensor path, the hashing kernel,
# CAFE's remap and scoring at batch 8,192 and 65,536, pinned host-to-device copies of collated
# batches and a DLRM step with nn.EmbeddingBag tables, each beside one H200's need at 2.1 M
# samples/s, into DIR/gpu-core.json. --core --dry-run: the same on the CPU at toy sizes (CI).
#
# It builds its own venv (.venv-gpu: torch 2.13 CUDA wheel, fbgemm-gpu 1.8, torchrec 1.8, by the
# recipe of scripts/setup-env.sh), then in under 8 minutes on one GPU (python -m cafe_dist.bench.gpucheck):
# trains full, hash and cafe (100x) on one GPU worker (row-wise sharding, NCCL) through TorchRec's
# train pipeline, and cafe again in the plain loop (pipeline_speedup), times the HotSketch
# tensor path on the GPU, and runs the quality bench on the real 100k Criteo sample for those three
# at 100x. Everything lands in DIR/gpu-check.json (default gpu-check-out/), written after each part.
# Without internet, pass --wheels DIR holding every wheel the venv needs (pip download them elsewhere).
# --dry-run uses the CPU venv (.venv) and the CPU: the same code path at toy sizes (CI runs it).
# LIMIT_S=N caps the python part (default 480 s; CI gives the dry run 1800 on its shared cores).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT=gpu-check-out
DATA=""
WHEELS=""
CUDA_INDEX=${CUDA_INDEX:-https://download.pytorch.org/whl/cu128}
LIMIT_S=${LIMIT_S:-480}
usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }
CORE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --core) CORE=1 ;;
    --out) OUT=$2; shift ;;
    --data) DATA=$2; shift ;;
    --wheels) WHEELS=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-check: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if [ "$CORE" = 1 ]; then
  PY=${PYTHON:-python3}
  CORE_ARGS=(--out "$OUT")
  [ "$DRY" = 1 ] && CORE_ARGS+=(--dry-run)
  # the carried tree, not an installed package; the libraries a bare GPU machine lacks made unimportable
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec timeout "$LIMIT_S" "$PY" -c '
import runpy, sys
for name in ("torchrec", "fbgemm_gpu", "ray", "mlflow"):
    sys.modules[name] = None  # import raises ImportError
sys.argv = ["gpu_core", *sys.argv[1:]]
runpy.run_module("cafe_dist.bench.gpu_core", run_name="__main__", alter_sys=True)' "${CORE_ARGS[@]}"
fi

if [ "$DRY" = 1 ]; then
  bash scripts/setup-env.sh
  PY=.venv/bin/python
else
  command -v nvidia-smi >/dev/null 2>&1 || { echo "gpu-check: no nvidia-smi here; on a CPU machine use --dry-run" >&2; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  VENV=.venv-gpu FBGEMM=fbgemm-gpu==1.8.0 TORCH_INDEX="$CUDA_INDEX" WHEELS="$WHEELS" bash scripts/setup-env.sh
  PY=.venv-gpu/bin/python
fi
ARGS=(--out "$OUT")
[ -n "$DATA" ] && ARGS+=(--data "$DATA")
[ "$DRY" = 1 ] && ARGS+=(--dry-run)
timeout "$LIMIT_S" "$PY" -m cafe_dist.bench.gpucheck "${ARGS[@]}"
