"""policy.files.created_mode and the folder atomic_dir leaves: the modes plain open()/mkdir() would give."""
from __future__ import annotations

import os

from policy.files import created_mode
from policy.models.base import atomic_dir


def test_created_mode_is_base_less_the_umask_and_leaves_the_umask_alone():
    old = os.umask(0o027)
    try:
        assert created_mode(0o666) == 0o640 and created_mode(0o777) == 0o750
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


def test_atomic_dir_folder_gets_the_mkdir_mode_not_mkdtemps_0700(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "weights.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "model" / "weights.txt").read_text() == "x"
