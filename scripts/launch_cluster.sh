#!/usr/bin/env bash
# Start a Ray cluster for FunRL by hand (no Docker), then run training on it.
#
#   On the head node:     ./scripts/launch_cluster.sh head [ray start options]
#   On each worker node:  ./scripts/launch_cluster.sh worker HEAD_IP [ray start options]
#   Then, on the head:    .venv/bin/python -m funrl.train ray.address=auto learner.num_ranks=8 learner.gpus_per_rank=1 ...
#   To stop (any node):   ./scripts/launch_cluster.sh stop
#
# Every node needs the same checkout and ./scripts/setup.sh run once, and the data
# manifests, starting model and run folder on a path every node sees (shared filesystem).
# Secure by default (docs/security.md): Ray token authentication is on. The head makes a token in
# ~/.ray/auth_token (mode 0600) unless one is given (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH); copy that
# file to ~/.ray/auth_token on every worker node and on any machine that submits to the cluster.
# The dashboard (and its Jobs API) listens on 127.0.0.1 only (from your machine:
# ssh -N -L 8265:127.0.0.1:8265 HEAD); usage statistics are off. Firewall the Ray ports (6379, 10001, the
# node and object manager ports) so that only the cluster's nodes reach them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
ray="$root/.venv/bin/ray"
port="${RAY_PORT:-6379}"
export RAY_AUTH_MODE=token
export RAY_USAGE_STATS_ENABLED=0 VLLM_NO_USAGE_STATS=1 VLLM_DO_NOT_TRACK=1 DO_NOT_TRACK=1 HF_HUB_DISABLE_TELEMETRY=1
token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"

have_token() { [[ -n "${RAY_AUTH_TOKEN:-}" || -s "$token_file" ]]; }

case "${1:-}" in
    head)   if ! have_token; then
                (umask 077 && "$ray" get-auth-token --generate >/dev/null)
                echo "Ray auth token written to $token_file: copy it to the same path on every worker node" >&2
            fi
            [[ -n "${RAY_AUTH_TOKEN:-}" ]] || chmod go-rwx "$token_file"
            exec "$ray" start --head --port="$port" --dashboard-host=127.0.0.1 "${@:2}" ;;
    worker) [[ -n "${2:-}" ]] || { echo "usage: $0 worker HEAD_IP" >&2; exit 2; }
            have_token || { echo "no Ray auth token: copy the head's ~/.ray/auth_token to $token_file" \
                                 "(or set RAY_AUTH_TOKEN)" >&2; exit 2; }
            exec "$ray" start --address="$2:$port" "${@:3}" ;;
    stop)   exec "$ray" stop ;;
    *)      sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
