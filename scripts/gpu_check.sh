#!/usr/bin/env bash
# The GPU check, in one go (< 8 min on one GPU): the `gpu`-marked tests, the learner benchmark at Fun-ASR-nano
# size and, where vLLM and Ray are installed, the weight-sync paths on CUDA; one JSON and one Markdown table.
#
#   ./scripts/gpu_check.sh [OUT_DIR]        # default OUT_DIR: $OUT (a device run's folder) or runs/gpu_check
#
# Runs from the checkout without installing it (PYTHONPATH=.), with the Python on PATH (PYTHON overrides), so it
# works on a machine that has torch, transformers and peft but not this project's environment. Wheels of missing
# packages in .whl/ are installed first into a temporary folder (docs/scaling.md#9-the-gpu-check). Each part has
# its own time limit; a part that fails or is skipped is recorded as such and the others still run. Exit status:
# 0 when every part that ran passed, 1 otherwise, 2 without a CUDA device.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-${OUT:-runs/gpu_check}}"
py="${PYTHON:-python3}"
mkdir -p "$out"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/funrl-site .whl/*.whl \
        && export PYTHONPATH="/tmp/funrl-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$root:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 PYTHONUNBUFFERED=1
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to $py (torch.cuda.is_available() is False)" >&2
    exit 2
fi
"$py" -c "import torch; print(f'gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}')" \
    | tee "$out/device.txt"

run_part() {  # NAME SECONDS COMMAND...: stdout+stderr to OUT/NAME.log, exit status to OUT/NAME.rc
    local name=$1 seconds=$2
    shift 2
    echo "gpu_check: $name (at most ${seconds} s)" >&2
    timeout "$seconds" "$@" >"$out/$name.log" 2>&1
    echo $? >"$out/$name.rc"
}

run_part gpu_tests 240 "$py" -m pytest -m gpu -p no:cacheprovider -q tests/policy/test_learner_gpu.py \
    tests/rollout/test_embedding_gpu.py \
    --junitxml "$out/gpu_tests.xml"
run_part bench_gpu_learner 180 "$py" scripts/bench_gpu_learner.py --json "$out/bench_gpu_learner.json"
if "$py" -c "import vllm, ray" >/dev/null 2>&1; then
    run_part bench_sync 120 "$py" scripts/bench_sync.py --paths --size 100m --repeats 3 --json "$out/bench_sync.json"
else
    echo "vllm or ray is not installed: skipped" >"$out/bench_sync.log"
    echo skipped >"$out/bench_sync.rc"
fi
"$py" scripts/gpu_report.py "$out"
