#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs `python -m funrl.train` with any arguments given.
# With no arguments: the built-in demo (local TTS speech data, shipped starting model, GRPO, before/after table).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh" demo,plot    # the demo's local voices, plots of the run
cd "$root"
export HF_HUB_OFFLINE=1 VLLM_ENABLE_V1_MULTIPROCESSING="${VLLM_ENABLE_V1_MULTIPROCESSING:-0}"
# Secure by default (docs/security.md): the local Ray gets token authentication (a fresh token per run,
# funrl.cluster), and no usage statistics leave the machine.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
export RAY_USAGE_STATS_ENABLED=0 VLLM_NO_USAGE_STATS=1 VLLM_DO_NOT_TRACK=1 DO_NOT_TRACK=1 HF_HUB_DISABLE_TELEMETRY=1
exec "$root/.venv/bin/python" -m funrl.train "$@"
