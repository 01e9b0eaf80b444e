"""Atomic, resumable checkpoints of a training run.

Layout under ``<out_dir>/checkpoints``::

    step_000010/            a complete checkpoint (has the COMPLETE marker)
        trainer_state.json  step and the data sampler's position (the driver re-seeds from run.seed + step)
        learner/            whatever the learner writes (DCP shards, AdamW, scheduler, each rank's RNG)
        COMPLETE
    .tmp-step_000012-<host>-<pid>/ a checkpoint being written; never picked up

A checkpoint is written into a temporary folder, every file and folder of it fsync'd, then marked
``COMPLETE`` (written and fsync'd last) and renamed into place in one ``os.replace``; a run killed at any moment
leaves at worst a ``.tmp-*`` folder, which ``latest()`` ignores and a later save removes once its writer (host,
pid) is gone. Pruning removes ``COMPLETE`` first, and skips a checkpoint a reader holds (`Checkpoint.reading`,
e.g. ``funrl.export``). ``latest()`` returns the newest checkpoint whose files are intact (every JSON file
parses, no file is empty) and says which newer ones it skipped. `RunLock` keeps a second process out of a run
folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

_STEP_DIR = re.compile(r"^step_(\d{6,})$")
_TMP_DIR = re.compile(r"^\.tmp-step_\d{6,}-(?:(?P<host>.+)-)?(?P<pid>\d+)$")
_LOW_SPACE_MIB = 64  # below this, a failed checkpoint write is taken for a full disk
COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path

    def trainer_state(self) -> dict:
        with open(self.path / STATE_FILE, encoding="utf-8") as f:
            return json.load(f)

    @contextlib.contextmanager
    def reading(self) -> Iterator["Checkpoint"]:
        """Hold the checkpoint while reading it: pruning skips it until the block ends (a shared lock)."""
        with open(self.path / COMPLETE, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            yield self

    def damage(self) -> str | None:
        """Why the checkpoint cannot be loaded (a torn or empty file), or None when it looks intact."""
        for path in sorted(self.path.rglob("*")):
            if not path.is_file():
                continue
            if path.stat().st_size == 0 and path.name != COMPLETE:
                return f"{path.relative_to(self.path)} is empty"
            if path.suffix == ".json":
                try:
                    json.loads(path.read_text(encoding="utf-8"))
                except (ValueError, UnicodeDecodeError) as exc:
                    return f"{path.relative_to(self.path)} does not parse ({exc})"
        return None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_tree(root: Path) -> None:
    """fsync every file below ``root``, then every folder (deepest first), then ``root``."""
    folders = []
    for path in root.rglob("*"):
        if path.is_file():
            _fsync_file(path)
        elif path.is_dir():
            folders.append(path)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        _fsync_dir(folder)
    _fsync_dir(root)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the partial copy is gone, older ones stay."""


class CheckpointManager:
    """Writes checkpoints atomically and keeps the newest ``keep_last`` of them."""

    def __init__(self, out_dir: str | os.PathLike, keep_last: int = 2) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root = Path(out_dir) / "checkpoints"
        self.keep_last = keep_last

    def all(self) -> list[Checkpoint]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            m = _STEP_DIR.match(child.name)
            if m and (child / COMPLETE).is_file() and (child / STATE_FILE).is_file():
                found.append(Checkpoint(int(m.group(1)), child))
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint that is intact (`Checkpoint.damage`); newer damaged ones are named
        on stderr and skipped (left in place for a look)."""
        for ckpt in reversed(self.all()):
            why = ckpt.damage()
            if why is None:
                return ckpt
            print(f"[funrl] skipping checkpoint {ckpt.path}: {why}", file=sys.stderr)
        return None

    def save(self, step: int, trainer_state: dict, write_payload: Callable[[Path], None]) -> Checkpoint:
        """Write ``trainer_state`` and the payload (``write_payload(tmp_dir)``) as step ``step``."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp()
        final = self.root / f"step_{step:06d}"
        tmp = self.root / f".tmp-step_{step:06d}-{socket.gethostname()}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            self._write(tmp, step, trainer_state, write_payload)
        except Exception as exc:
            # the disk is full (OSError here; torch.save in a learner rank reports it as a RuntimeError inside a
            # WorkerError), the folder went away, ...: free what was written, keep the older checkpoints
            shutil.rmtree(tmp, ignore_errors=True)
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, FloatingPointError):  # the NaN guard refused the weights: not a write error
                raise
            newest = self.latest()
            kept = f"the newest checkpoint is still {newest.path}" if newest else "no earlier checkpoint exists"
            free = shutil.disk_usage(self.root).free / 2**20
            why = " ".join(str(cause).split())[:300]
            no_space = getattr(cause, "errno", None) == errno.ENOSPC or "No space left" in why or free < _LOW_SPACE_MIB
            fix = "Free space (or fix the folder)" if no_space else "Fix that cause"
            raise CheckpointWriteError(
                f"writing the checkpoint of step {step} in {self.root} failed "
                f"({type(cause).__name__}: {why}); {free:.1f} MiB free there; the partial "
                f"copy was removed and {kept}. {fix}, then continue with --resume"
            ) from exc
        if final.exists():  # a re-run of the same step replaces the older copy
            _remove(final)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        self._prune()
        return Checkpoint(step, final)

    @staticmethod
    def _write(tmp: Path, step: int, trainer_state: dict, write_payload: Callable[[Path], None]) -> None:
        write_payload(tmp)
        state = dict(trainer_state, step=step)
        with open(tmp / STATE_FILE, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1, sort_keys=True)
        _fsync_tree(tmp)  # every file the checkpoint needs is on disk ...
        with open(tmp / COMPLETE, "w", encoding="utf-8") as f:
            f.write("ok\n")  # ... before it is marked complete
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)

    def _remove_stale_tmp(self) -> None:
        """Remove temp folders whose writer is gone: this host's, of a pid that no longer runs."""
        host = socket.gethostname()
        for child in self.root.iterdir():
            m = _TMP_DIR.match(child.name)
            if m and m.group("host") in (None, host) and not _pid_alive(int(m.group("pid"))):
                shutil.rmtree(child, ignore_errors=True)

    def _prune(self) -> None:
        done = self.all()
        for old in done[: max(0, len(done) - self.keep_last)]:
            if not _remove(old.path):
                print(f"[funrl] keeping {old.path} for now: a reader (e.g. funrl.export) holds it", file=sys.stderr)


def _remove(folder: Path) -> bool:
    """Delete a checkpoint folder, ``COMPLETE`` first (a crash midway leaves an incomplete one, never a torn
    complete one); False (nothing deleted) while a reader holds it."""
    marker = folder / COMPLETE
    if marker.is_file():
        with open(marker, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            marker.unlink()
    shutil.rmtree(folder, ignore_errors=True)
    return True


class RunLockedError(RuntimeError):
    """Another process holds the run folder."""


class RunLock:
    """An exclusive lock on ``OUT/.lock`` for a run's life: a second training process on the same folder gets
    a clear error instead of interleaving checkpoints. Released on `release` or when the process ends."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.path = Path(out_dir) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            owner = self._file.read().strip() or "unknown"
            self._file.close()
            raise RunLockedError(
                f"{self.path.parent} is in use by another FunRL process ({owner}); wait for it "
                "to end, or choose another run.out_dir"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
