"""Optional parts of FunRL and the pip extra that installs each (pyproject.toml, [project.optional-dependencies]).

Modules that need an optional package import it through `require`, inside the function that uses it, so the rest
of FunRL imports and runs without it, and a missing package is named together with the line that installs it.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the pip extra that installs it."""


def _message(module: str, extra: str, purpose: str, detail: str) -> str:
    return (
        f"{purpose} needs the {module.split('.')[0]!r} package ({detail}): pip install 'funrl[{extra}]' "
        f"(./scripts/run.sh and ./scripts/test.sh install it into .venv)"
    )


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``module`` imported; `MissingExtra` naming ``extra`` when it (or a package it needs) is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(_message(module, extra, purpose, str(exc))) from exc


def check_installed(modules: tuple[str, ...], extra: str, purpose: str) -> None:
    """Refuse early (before any work starts) when one of ``modules`` cannot be found, without importing them."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(_message(module, extra, purpose, "not installed"))
