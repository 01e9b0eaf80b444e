"""File-system helpers (no torch): `created_mode` lives in `rewards.files` (the bottom package) and is used from
here; `replace_dir` swaps a finished temp folder into place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rewards.files import created_mode

__all__ = ["created_mode", "replace_dir"]


def replace_dir(tmp: Path, folder: Path) -> None:
    """Put the finished folder ``tmp`` at ``folder`` (a sibling): the old one is renamed aside, then removed."""
    old = None
    if folder.exists():
        old = folder.parent / f".{folder.name}.old-{os.getpid()}"
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
