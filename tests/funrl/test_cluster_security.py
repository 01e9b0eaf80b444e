"""The environment the training driver gives itself and its Ray workers: usage statistics off, Ray token
authentication on (docs/security.md), and the local Ray it starts refusing a client without the token."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from ray._raylet import Config as RayConfig

from funrl.cluster import NO_USAGE_STATS, worker_env

ROOT = Path(__file__).resolve().parents[2]
_KEYS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", *NO_USAGE_STATS)


@pytest.fixture
def clean_env(monkeypatch):
    """The auth and usage-stats variables unset; all restored (and Ray's cached auth mode with them) after."""
    if ray.is_initialized():  # worker_env runs before Ray starts; never re-read a live Ray's config
        pytest.skip("a Ray started by another test is still running in this process")
    for key in _KEYS:
        monkeypatch.delenv(key, raising=False)
    yield monkeypatch
    monkeypatch.undo()
    RayConfig.initialize("")


def test_worker_env_turns_usage_stats_off_even_where_the_environment_turns_them_on(clean_env):
    clean_env.setenv("RAY_USAGE_STATS_ENABLED", "1")
    clean_env.setenv("DO_NOT_TRACK", "0")
    env = worker_env(local=True)
    for key, value in NO_USAGE_STATS.items():
        assert env[key] == value and os.environ[key] == value, key
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["VLLM_NO_USAGE_STATS"] == "1"


def test_a_local_ray_gets_token_auth_and_a_fresh_token_that_is_not_sent_to_the_workers(clean_env):
    env = worker_env(local=True)
    assert env["RAY_AUTH_MODE"] == os.environ["RAY_AUTH_MODE"] == "token"
    token = os.environ["RAY_AUTH_TOKEN"]
    assert len(token) == 64 and "RAY_AUTH_TOKEN" not in env
    assert token not in json.dumps(env)


def test_joining_a_cluster_uses_its_token_and_an_explicit_opt_out_is_kept(clean_env):
    worker_env(local=False)
    assert os.environ["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in os.environ
    clean_env.setenv("RAY_AUTH_MODE", "disabled")
    assert worker_env(local=False)["RAY_AUTH_MODE"] == "disabled"


_DRIVER = r"""
import json, os, subprocess, sys
from funrl.cluster import Cluster
from funrl.config import load_config
import ray

cluster = Cluster(load_config(None, ["ray.num_cpus=2"]))
cluster._start_ray()
try:
    @ray.remote
    def seen():
        return {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED", "VLLM_NO_USAGE_STATS",
                                               "VLLM_DO_NOT_TRACK", "DO_NOT_TRACK", "HF_HUB_DISABLE_TELEMETRY")}
    worker = ray.get(seen.remote(), timeout=120)
    probe = ("import ray, sys\ntry:\n    ray.init(address=sys.argv[1], log_to_driver=False)\n"
             "    print('CONNECTED', ray.get(ray.remote(lambda: 1).remote(), timeout=60))\n"
             "except Exception as exc:\n    print('REFUSED', type(exc).__name__)\n")
    gcs = ray.get_runtime_context().gcs_address
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    # a refused client retries for ~20 s (one try a second) before it gives up: 3 tries tell the same
    env.update(RAY_NUM_REDIS_GET_RETRIES="3", RAY_gcs_server_port_wait_time_s="3")
    out = subprocess.run([sys.executable, "-c", probe, gcs], env=env, capture_output=True, text=True, timeout=180)
    print("RESULT", json.dumps({"worker": worker, "tokenless_client": out.stdout.strip().splitlines()[-1:]}))
finally:
    cluster.shutdown()
"""


@pytest.mark.ray
@pytest.mark.slow
def test_the_local_ray_the_driver_starts_has_usage_stats_off_and_refuses_a_client_without_the_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in _KEYS}
    env.update(HOME=str(tmp_path / "home"), RAY_USAGE_STATS_ENABLED="1")
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["worker"] == {"RAY_AUTH_MODE": "token", **NO_USAGE_STATS}
    assert result["tokenless_client"] == ["REFUSED ConnectionError"]
    assert not (tmp_path / "home" / ".ray" / "auth_token").exists()  # the run's token stays in memory
