#!/usr/bin/env bash
# Start (or stop) a local multi-process Ray cluster on loopback, to try the cluster path on one machine.
#   cluster/local_cluster.sh start [NUM_WORKER_NODES]   → head at 127.0.0.1:6379, dashboard :8265
#   cluster/local_cluster.sh stop
# then: cafe-dist submit jobs/demo.yaml --address http://127.0.0.1:8265 --wait
set -euo pipefail
RAY=${RAY:-.venv/bin/ray}
# jobs run `python -m cafe_dist.cli ...` with the PATH the nodes were started with: put the venv first
export PATH="$(cd "$(dirname "$RAY")" && pwd):$PATH"
case "${1:-start}" in
  start)
    "$RAY" start --head --node-ip-address=127.0.0.1 --port=6379 --dashboard-host=127.0.0.1 \
      --dashboard-port=8265 --num-cpus="${HEAD_CPUS:-2}"
    for _ in $(seq 1 "${2:-1}"); do
      "$RAY" start --address=127.0.0.1:6379 --node-ip-address=127.0.0.1 --num-cpus="${WORKER_CPUS:-2}"
    done
    echo "Ray cluster up: address 127.0.0.1:6379, dashboard http://127.0.0.1:8265"
    ;;
  stop) "$RAY" stop --force ;;
  *) echo "usage: $0 start [NUM_WORKER_NODES] | stop" >&2; exit 2 ;;
esac
