#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs `python -m funrl.train` with any arguments given.
# With no arguments: the built-in demo (local TTS speech data, shipped starting model, GRPO, before/after table).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
export HF_HUB_OFFLINE=1 VLLM_ENABLE_V1_MULTIPROCESSING="${VLLM_ENABLE_V1_MULTIPROCESSING:-0}" RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
exec "$root/.venv/bin/python" -m funrl.train "$@"
