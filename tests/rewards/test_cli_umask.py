"""``python -m rewards score --out``: the output file gets the mode open(path, "w") would give, and writing it
never changes the process umask (other threads of a program using the library would create files meanwhile)."""

import os

from rewards.cli import _write_atomic


def test_writing_the_out_file_gives_the_open_mode_and_never_changes_the_umask(tmp_path, monkeypatch):
    real_umask, changes = os.umask, []

    def watched_umask(mask: int) -> int:  # the real os.umask, recording any call that changes it
        before = real_umask(mask)
        if mask != before:
            changes.append((oct(before), oct(mask)))
        return before

    old = real_umask(0o027)
    monkeypatch.setattr(os, "umask", watched_umask)
    try:
        _write_atomic(str(tmp_path / "scores.jsonl"), ["{}\n"])
    finally:
        monkeypatch.undo()
        real_umask(old)
    assert changes == []
    assert (tmp_path / "scores.jsonl").stat().st_mode & 0o777 == 0o640
