"""Fixtures of the reward-library tests.

* ``restore_registry`` — snapshot ``rewards.REGISTRY`` and the imported modules; put both back
  after the test, so rewards registered by a test (or a plugin it loads) do not leak.
* ``plugin_dir`` — a temporary folder on ``sys.path`` for plugin modules written by a test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import rewards


@pytest.fixture
def restore_registry():
    saved = dict(rewards.REGISTRY)
    modules = set(sys.modules)
    yield rewards.REGISTRY
    rewards.REGISTRY.clear()
    rewards.REGISTRY.update(saved)
    for name in set(sys.modules) - modules:
        del sys.modules[name]


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_registry) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path
