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


def test_every_shipped_data_folder_is_listed_with_patterns_that_match_its_files() -> None:
    """Asset folders hold no ``__init__.py`` (a chained SFT asset nests ``base/base/``), so the test above does
    not see them: each folder with files under a package must be listed and its files matched by package-data."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, data = set(tool["packages"]), tool["package-data"]
    files = [f for top in ("recipes", "demo") for f in (ROOT / "funrl" / top / "assets").rglob("*") if f.is_file()]
    for folder in {f.parent for f in files if "__pycache__" not in f.parts}:
        name = ".".join(folder.relative_to(ROOT).parts)
        assert name in listed, f"add {name} to [tool.setuptools] packages"
        patterns = data.get(name, [])
        unmatched = [f.name for f in folder.iterdir() if f.is_file() and not any(f.match(p) for p in patterns)]
        assert not unmatched, f"[tool.setuptools.package-data] {name} misses {unmatched}"
