"""The local Ray a run starts (funrl/local_ray.py): outside the driver's process group and session, private to
the run (its own temporary directory), and gone with the driver even when the driver is SIGKILLed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.ray, pytest.mark.slow]

_DRIVER = r"""
import json, os, sys, time
from funrl.cluster import worker_env
from funrl.local_ray import LocalRay
import ray

env = worker_env(local=True)
head = LocalRay(num_cpus=1, num_gpus=0)
ray.init(address=head.address, runtime_env={"env_vars": env}, log_to_driver=False)
seen = ray.get(ray.remote(lambda: (os.getpid(), os.getsid(0))).remote(), timeout=120)
print("READY " + json.dumps({"head": head._proc.pid, "temp_dir": str(head.temp_dir), "worker": seen}), flush=True)
time.sleep(600)
"""


def _ray_processes(temp_dir: str) -> list[psutil.Process]:
    """Processes whose command line names the run's Ray temporary directory (ray start, GCS, raylet, ...)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_local_ray_runs_in_its_own_session_and_stops_when_the_driver_is_sigkilled(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        info, lines = None, []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("READY "):
                info = json.loads(line[len("READY ") :])
                break
        assert info is not None, "".join(lines)[-3000:]
        driver_session = os.getsid(proc.pid)
        assert os.getsid(info["head"]) != driver_session  # a group/session signal to the driver misses Ray
        assert info["worker"][1] != driver_session
        ray_procs = _ray_processes(info["temp_dir"])
        assert len(ray_procs) >= 3 and all(p.pid != proc.pid for p in ray_procs)  # ray start, GCS, raylet, ...
        assert all(os.getsid(p.pid) != driver_session for p in ray_procs)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its group; Ray is not in it
        proc.wait(30)
    deadline = time.monotonic() + 90
    while _ray_processes(info["temp_dir"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ray_processes(info["temp_dir"]) == []  # PR_SET_PDEATHSIG: ray start stopped everything it started


def test_stop_removes_the_temporary_folder_unless_told_to_keep_the_logs(monkeypatch):
    from funrl.local_ray import LocalRay

    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # for the `ray start` processes only: this one starts no Ray
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
    kept, gone = LocalRay(1, 0, wait=False), LocalRay(1, 0, wait=False)  # both boot at once
    kept.wait_ready()
    gone.wait_ready()
    kept.stop(keep_logs=True)
    gone.stop()
    try:
        assert kept.logs_dir.is_dir() and any(kept.logs_dir.glob("gcs_server*"))  # a failed run's Ray logs
        assert not gone.temp_dir.exists()
        assert _ray_processes(str(kept.temp_dir)) == [] and _ray_processes(str(gone.temp_dir)) == []
    finally:
        shutil.rmtree(kept.temp_dir, ignore_errors=True)
