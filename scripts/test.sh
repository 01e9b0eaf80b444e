#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh, with the dev extra), then the engineering gate, failing fast:
# ruff (lint, then format check) and mypy (settings in pyproject.toml), then pytest on every test but the GPU ones,
# with any arguments given.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh" dev
cd "$root"
echo "[test] ruff check" >&2
"$root/.venv/bin/ruff" check .
echo "[test] ruff format --check" >&2
"$root/.venv/bin/ruff" format --check .
echo "[test] mypy" >&2
"$root/.venv/bin/mypy"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
export RAY_USAGE_STATS_ENABLED=0 VLLM_NO_USAGE_STATS=1 VLLM_DO_NOT_TRACK=1 DO_NOT_TRACK=1 HF_HUB_DISABLE_TELEMETRY=1
# Every marker but gpu (a plain pytest runs only the fast tier: pyproject.toml), in as many pytest-xdist workers
# as there are cores, at most 4 (most of a test's time is starting processes and waiting on them: 2 workers on
# 2 cores finish the suite in about 20 min instead of 35), listing the 30 slowest. A -m or -n given here wins; -n 0
# runs in one process.
workers="$(nproc 2>/dev/null || echo 1)"
(( workers > 4 )) && workers=4
exec "$root/.venv/bin/python" -m pytest -m "not gpu" -n "$workers" --dist worksteal --durations=30 "$@"
