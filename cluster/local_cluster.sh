#!/usr/bin/env bash
# Start (or stop) a local multi-process Ray cluster on loopback, to try the cluster path on one machine.
#   cluster/local_cluster.sh start [NUM_WORKER_NODES]   → prints the address and the dashboard URL
#   cluster/local_cluster.sh stop
# then: . .ray-local/cluster.env && cafe-dist job submit --config jobs/demo.yaml --wait
#
# Every port a node listens on is picked free (another Ray on this machine, a test session's or a
# colleague's, keeps its own), and each node runs `ray start --block` in a process group of its own,
# recorded in $STATE_DIR: `stop` ends those groups and nothing else (`ray stop` would stop every Ray
# of this user on the machine).
set -euo pipefail
RAY=${RAY:-.venv/bin/ray}
PYTHON=${PYTHON:-$(dirname "$RAY")/python}
STATE_DIR=${STATE_DIR:-.ray-local}
# jobs run `python -m cafe_dist.cli ...` with the PATH the nodes were started with: put the venv first
export PATH="$(cd "$(dirname "$RAY")" && pwd):$PATH"
# a head started with `ray start` requires Ray's token (kept in ~/.ray/auth_token): the other nodes send it
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

node_ports() {  # the ports a node listens on besides the GCS and the dashboard
  local name
  for name in dashboard-agent-listen-port dashboard-agent-grpc-port metrics-export-port runtime-env-agent-port \
              node-manager-port object-manager-port; do
    printf -- '--%s=%s ' "$name" "$(free_port)"
  done
}

start_node() {  # start_node LOG ARGS...: `ray start --block` in its own session; its pid to $STATE_DIR/pids
  local log=$1; shift
  setsid "$RAY" start --block "$@" >"$log" 2>&1 &
  echo $! >>"$STATE_DIR/pids"
}

case "${1:-start}" in
  start)
    if [[ -s "$STATE_DIR/pids" ]]; then
      echo "a cluster started from here is up ($STATE_DIR/pids): run '$0 stop' first" >&2; exit 1
    fi
    mkdir -p "$STATE_DIR"
    port=$(free_port); dashboard=$(free_port); client=$(free_port)
    # shellcheck disable=SC2046  # the ports are words on purpose
    start_node "$STATE_DIR/head.log" --head --node-ip-address=127.0.0.1 --port="$port" --dashboard-host=127.0.0.1 \
      --dashboard-port="$dashboard" --ray-client-server-port="$client" --num-cpus="${HEAD_CPUS:-2}" $(node_ports)
    up() {  # the head is up once its Jobs API answers (with the token Ray's auth keeps for this user)
      "$PYTHON" -c "from ray.job_submission import JobSubmissionClient as C; from cafe_dist.submit import auth_headers as h
C('http://127.0.0.1:$dashboard', headers=h()).list_jobs()" >/dev/null 2>&1
    }
    for _ in $(seq 1 120); do up && break; sleep 1; done
    up || { echo "the head did not come up: $STATE_DIR/head.log" >&2; exit 1; }
    for i in $(seq 1 "${2:-1}"); do
      # shellcheck disable=SC2046
      start_node "$STATE_DIR/worker$i.log" --address="127.0.0.1:$port" --node-ip-address=127.0.0.1 \
        --num-cpus="${WORKER_CPUS:-2}" $(node_ports)
    done
    # sourced, it points cafe-dist job submit/status/logs/stop at this cluster's dashboard
    echo "$port" >"$STATE_DIR/gcs_port"
    printf 'export RAY_JOBS_ADDRESS=http://127.0.0.1:%s\n# the GCS, for ray status --address: 127.0.0.1:%s\n' \
      "$dashboard" "$port" >"$STATE_DIR/cluster.env"
    echo "Ray cluster up: GCS 127.0.0.1:$port, dashboard http://127.0.0.1:$dashboard"
    echo "then: . $STATE_DIR/cluster.env && .venv/bin/cafe-dist job submit --config jobs/demo.yaml --wait"
    ;;
  stop)
    [[ -s "$STATE_DIR/pids" ]] || { echo "no cluster started from here ($STATE_DIR/pids is empty)"; exit 0; }
    while read -r pid; do kill -TERM -- "-$pid" 2>/dev/null || true; done <"$STATE_DIR/pids"
    for _ in $(seq 1 60); do  # each node stops its raylet, GCS and workers on SIGTERM
      alive=0
      while read -r pid; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done <"$STATE_DIR/pids"
      [[ $alive == 0 ]] && break
      sleep 1
    done
    while read -r pid; do kill -KILL -- "-$pid" 2>/dev/null || true; done <"$STATE_DIR/pids"
    # `ray start --head` pointed Ray's "current cluster" file at this head: a plain ray.init() on this
    # machine would try to join it after it is gone (`ray stop` removes the file; so do we, if it is ours)
    current=/tmp/ray/ray_current_cluster
    if [[ -f "$STATE_DIR/gcs_port" && -f $current ]] && grep -q ":$(cat "$STATE_DIR/gcs_port")\$" $current; then
      rm -f $current
    fi
    rm -f "$STATE_DIR/pids" "$STATE_DIR/cluster.env" "$STATE_DIR/gcs_port"
    echo "stopped the cluster started from here"
    ;;
  *) echo "usage: $0 start [NUM_WORKER_NODES] | stop" >&2; exit 2 ;;
esac
