"""Secure by default (docs/security.md), read from the files themselves: every way FunRL starts Ray (the cluster
launcher, the compose cluster, the two images, run.sh) has token authentication on, binds nothing Ray serves to
0.0.0.0, publishes no Ray port, and switches usage statistics off with the variables funrl.cluster uses."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from funrl.cluster import NO_USAGE_STATS

ROOT = Path(__file__).resolve().parents[2]
RAY_PORTS = {"6379", "8265", "10001"}


def _code_lines(path: Path) -> list[str]:
    """The file's lines without comments, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    return [
        line.split(" #")[0].strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def _dockerfile_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in _code_lines(path):
        if line.upper().startswith("ENV "):
            env.update(item.split("=", 1) for item in shlex.split(line[4:]))
    return env


def _shell_exports(path: Path) -> dict[str, str]:
    """``export A=x B="${B:-y}"`` -> {"A": "x", "B": "y"}: the values the script sets when the caller sets none."""
    env: dict[str, str] = {}
    for line in _code_lines(path):
        if line.startswith("export "):
            for item in shlex.split(line[len("export ") :]):
                key, _, value = item.partition("=")
                env[key] = re.sub(r"^\$\{\w+:-(.*)\}$", r"\1", value)
    return env


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_images_turn_token_auth_on_and_usage_stats_off_and_expose_no_ray_port(name):
    path = ROOT / "docker" / name
    env = _dockerfile_env(path)
    assert env.get("RAY_AUTH_MODE") == "token"
    assert {k: env.get(k) for k in NO_USAGE_STATS} == NO_USAGE_STATS
    exposed = {
        port.split("/")[0]
        for line in _code_lines(path)
        if line.upper().startswith("EXPOSE ")
        for port in line.split()[1:]
    }
    assert not exposed & RAY_PORTS, f"{name} exposes {sorted(exposed & RAY_PORTS)}: docker run -P publishes them"
    assert "0.0.0.0" not in "\n".join(_code_lines(path))


def test_the_cluster_launcher_forces_token_auth_and_binds_the_dashboard_to_localhost():
    path = ROOT / "scripts/launch_cluster.sh"
    code = "\n".join(_code_lines(path))
    env = _shell_exports(path)
    assert "export RAY_AUTH_MODE=token" in code.splitlines()  # forced, not a default the caller can flip
    assert {k: env.get(k) for k in NO_USAGE_STATS} == NO_USAGE_STATS
    head = next(line for line in code.splitlines() if "start --head" in line)
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in code and "RAY_AUTH_MODE=disabled" not in code
    assert "umask 077" in code and "get-auth-token --generate" in code  # the head's token file is 0600


def test_compose_cluster_has_token_auth_binds_the_dashboard_to_localhost_and_publishes_nothing():
    spec = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    secrets = spec.get("secrets", {})
    for name, service in spec["services"].items():
        env = service.get("environment", {})
        assert env.get("RAY_AUTH_MODE") == "token", name
        secret = env.get("RAY_AUTH_TOKEN_PATH", "").removeprefix("/run/secrets/")
        assert secret in service.get("secrets", []) and secret in secrets, f"{name}: no token file mounted"
        assert "ports" not in service and "expose" not in service, f"{name} publishes ports"
        assert "0.0.0.0" not in service["command"], name
    assert "--dashboard-host=127.0.0.1" in spec["services"]["ray-head"]["command"]


def test_run_sh_starts_the_local_ray_with_token_auth_and_no_usage_stats_and_test_sh_sends_none():
    run = _shell_exports(ROOT / "scripts/run.sh")
    assert run.get("RAY_AUTH_MODE") == "token"
    for script in ("run.sh", "test.sh"):
        env = _shell_exports(ROOT / "scripts" / script)
        assert {k: env.get(k) for k in NO_USAGE_STATS} == NO_USAGE_STATS, script
