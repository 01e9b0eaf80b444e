#!/usr/bin/env bash
# Start a Ray cluster for FunRL by hand (no Docker), then run training on it.
#
#   On the head node:     ./scripts/launch_cluster.sh head
#   On each worker node:  ./scripts/launch_cluster.sh worker HEAD_IP
#   Then, on the head:    .venv/bin/python -m funrl.train ray.address=auto learner.num_ranks=8 learner.gpus_per_rank=1 ...
#   To stop (any node):   ./scripts/launch_cluster.sh stop
#
# Every node needs the same checkout and ./scripts/setup.sh run once, and the data
# manifests, starting model and run folder on a path every node sees (shared filesystem).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
ray="$root/.venv/bin/ray"
port="${RAY_PORT:-6379}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
case "${1:-}" in
    head)   exec "$ray" start --head --port="$port" --dashboard-host=0.0.0.0 ;;
    worker) [[ -n "${2:-}" ]] || { echo "usage: $0 worker HEAD_IP" >&2; exit 2; }
            exec "$ray" start --address="$2:$port" ;;
    stop)   exec "$ray" stop ;;
    *)      sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
