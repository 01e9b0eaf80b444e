"""policy.files.created_mode and the folder atomic_dir leaves: the modes plain open()/mkdir() would give."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from policy.files import created_mode
from policy.models.base import atomic_dir


def test_created_mode_is_base_less_the_current_umask():
    old = os.umask(0o027)
    try:
        assert created_mode(0o666) == 0o640 and created_mode(0o777) == 0o750
        os.umask(0o077)
        assert created_mode(0o666) == 0o600 and created_mode(0o777) == 0o700
        assert os.umask(0o077) == 0o077
    finally:
        os.umask(old)


def _proc_umask() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_created_mode_never_changes_the_umask_that_other_threads_see():
    """A thread watching the umask while created_mode runs in a loop never sees another value (reading it
    with os.umask(0) then back showed 0, i.e. files created then would be world-writable, within 0.3 s)."""
    old, interval = os.umask(0o027), sys.getswitchinterval()
    seen, stop = set(), threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.add(_proc_umask())

    sys.setswitchinterval(1e-6)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            assert created_mode(0o666) == 0o640
    finally:
        stop.set()
        watcher.join()
        sys.setswitchinterval(interval)
        os.umask(old)
    assert seen == {0o027}


def test_atomic_dir_folder_gets_the_mkdir_mode_not_mkdtemps_0700(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "weights.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "model" / "weights.txt").read_text() == "x"
