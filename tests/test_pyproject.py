"""pyproject.toml ships every Python package of the repository: a wheel (``pip install .``, not editable) that
missed one would fail at import time on the user's machine."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("rewards", "policy", "rollout", "funrl")


def test_every_folder_with_an_init_module_is_a_listed_package_and_every_listed_package_exists() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in TOP
        for init in (ROOT / top).rglob("__init__.py")
        if ".venv" not in init.parts
    }
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert all((ROOT / Path(*name.split("."))).is_dir() for name in listed)
    assert set(TOP) <= listed
