"""Atomic, resumable checkpoints of a training run.

Layout under ``<out_dir>/checkpoints``::

    step_000010/            a complete checkpoint (has the COMPLETE marker)
        trainer_state.json  step and the data sampler's position (the driver re-seeds from run.seed + step)
        learner/            whatever the learner writes (DCP shards, AdamW, scheduler, each rank's RNG)
        COMPLETE
    .tmp-step_000012-<pid>/ a checkpoint being written; never picked up

A checkpoint is written into a temporary folder, marked complete, fsync'd and
renamed into place in one ``os.replace``; a run killed at any moment leaves at
worst a ``.tmp-*`` folder, which ``latest()`` ignores and the next save removes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

_STEP_DIR = re.compile(r"^step_(\d{6,})$")
COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path

    def trainer_state(self) -> dict:
        with open(self.path / STATE_FILE, encoding="utf-8") as f:
            return json.load(f)


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
        done = self.all()
        return done[-1] if done else None

    def save(self, step: int, trainer_state: dict, write_payload: Callable[[Path], None]) -> Checkpoint:
        """Write ``trainer_state`` and the payload (``write_payload(tmp_dir)``) as step ``step``."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp()
        final = self.root / f"step_{step:06d}"
        tmp = self.root / f".tmp-step_{step:06d}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write_payload(tmp)
        state = dict(trainer_state, step=step)
        with open(tmp / STATE_FILE, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        (tmp / COMPLETE).write_text("ok\n")
        _fsync_dir(tmp)
        if final.exists():  # a re-run of the same step replaces the older copy
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        self._prune()
        return Checkpoint(step, final)

    def _remove_stale_tmp(self) -> None:
        for child in self.root.iterdir():
            if child.name.startswith(".tmp-step_"):
                shutil.rmtree(child, ignore_errors=True)

    def _prune(self) -> None:
        done = self.all()
        for old in done[: max(0, len(done) - self.keep_last)]:
            shutil.rmtree(old.path, ignore_errors=True)
