#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs pytest with any arguments given.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 RAY_AUTH_MODE=disabled
exec "$root/.venv/bin/python" -m pytest "$@"
