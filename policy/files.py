"""File-system helpers shared by the packages above `rewards` (which may import nothing of ours)."""
from __future__ import annotations

import os


def created_mode(base: int) -> int:
    """``base`` (0o666 for a file, 0o777 for a folder) less the process umask: the mode ``open(path, "w")``
    or ``mkdir`` would give, for temp files and folders that mkstemp/mkdtemp create as 0600/0700."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask
