"""Helpers for tests that run ``python -m funrl.train`` as a user would: a subprocess in its own session
(so a test can signal or kill the driver and the local Ray it started), reading the run folder's JSONL logs,
waiting for a file, finding this run's actor processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tiny_run(model_dir: Path, manifest: Path, out: Path, extra: dict | None = None) -> dict:
    """The overrides of a short CPU run of a tiny model (4 clips x 4 hypotheses of at most 8 tokens per step,
    a 32 MiB KV cache, one micro-batch), then ``extra``; `as_args` turns them into ``key=value`` arguments."""
    return {
        "model.path": model_dir,
        "data.train_manifest": manifest,
        "rollout.n": 4,
        "rollout.max_new_tokens": 8,
        "rollout.kv_cache_memory_bytes": 32 << 20,
        "learner.micro_batch": 16,
        "run.clips_per_step": 4,
        "run.out_dir": out,
        "ray.num_cpus": 3,
    } | (extra or {})


def as_args(overrides: dict) -> list[str]:
    return [f"{k}={v}" for k, v in overrides.items()]


def run_train(
    args: list[str], env_extra: dict | None = None, cwd: Path = ROOT, demo: bool = False, **kw
) -> subprocess.Popen:
    """``python -m funrl.train --no-demo ARGS`` (``ARGS`` alone with ``demo``: the built-in demo's config under
    them) with the default (secure) Ray settings; output in ``stdout``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0", **(env_extra or {}))
    env.pop("RAY_AUTH_MODE", None)  # the driver's default: token authentication on its local Ray
    return subprocess.Popen(
        [sys.executable, "-m", "funrl.train", *([] if demo else ["--no-demo"]), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kw,
    )


def jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file ([] when it does not exist yet)."""
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    """Until ``path`` exists; fails with the run's log tail if the run ends or the time is up first."""
    deadline = time.time() + seconds
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert path.exists(), proc.communicate()[0][-3000:] if proc.poll() is not None else f"no {path.name}"


def wait_for_steps(out: Path, proc: subprocess.Popen, steps: int, seconds: float = 300) -> None:
    """Until ``OUT/metrics.jsonl`` holds ``steps`` steps."""
    deadline = time.time() + seconds
    while len(jsonl(out / "metrics.jsonl")) < steps:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.1)


def own_processes(root_pid: int, title: str) -> list:
    """Processes under ``root_pid`` whose command line holds ``title`` (e.g. "ray::VLLMRolloutWorker")."""
    import psutil

    found = []
    for child in psutil.Process(root_pid).children(recursive=True):
        try:
            if title in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found
