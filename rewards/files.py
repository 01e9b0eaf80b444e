"""File-system helpers of every package (here, in the bottom package, so that `rewards` has them too)."""

from __future__ import annotations

import os


def _proc_umask() -> int | None:
    """The process umask from ``/proc/self/status`` (Linux >= 4.7), read without changing it; None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_at_import() -> int:
    umask = _proc_umask()
    if umask is None:  # no /proc: os.umask can only be read by setting it, so do that once, at import
        umask = os.umask(0o077)
        os.umask(umask)
    return umask


_UMASK_AT_IMPORT = _umask_at_import()


def created_mode(base: int) -> int:
    """``base`` (0o666 for a file, 0o777 for a folder) less the process umask: the mode ``open(path, "w")``
    or ``mkdir`` would give, for temp files and folders that mkstemp/mkdtemp create as 0600/0700.

    The umask is read, never set: setting it even for an instant (``os.umask(0)`` then back) would give
    files that other threads create meanwhile mode 0666. Without /proc, the umask at import is used."""
    umask = _proc_umask()
    return base & ~(_UMASK_AT_IMPORT if umask is None else umask)
