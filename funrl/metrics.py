"""Run metrics: one JSON object per step in ``metrics.jsonl``, and the other ``run.loggers`` (`funrl.loggers`)."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path


class JsonlLog:
    """Appends one JSON object per step to ``path``; survives a resume.

    On resume, records of steps after ``resume_step`` (written after the last checkpoint by a killed
    run) and a last line cut by the kill are dropped, so the file has each step once.
    """

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")

    def _truncate_after(self, step: int) -> None:
        """Keep the records of steps <= ``step``, streaming line by line (a rollouts.jsonl can be GBs); kept
        lines are copied as they are."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(self.path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
            for line in src:
                record_step = _line_step(line)
                if record_step is not None and record_step <= step:
                    dst.write(line if line.endswith("\n") else line + "\n")
        os.replace(tmp, self.path)

    def write(self, step: int, record: dict) -> None:
        self._file.write(json.dumps({"step": step, **record}, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


_STEP_PREFIX = re.compile(r'^\{"step": (\d+)[,}]')


def _line_step(line: str) -> int | None:
    """The step of one JSONL record (None for a blank or cut line): read from the ``{"step": N`` prefix this
    module writes, else by parsing the line."""
    m = _STEP_PREFIX.match(line)
    if m and line.rstrip().endswith("}"):
        return int(m.group(1))
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return int(record.get("step", 0)) if isinstance(record, dict) else None


def should_log(every: str, step: int) -> bool:
    """``run.log_rollouts``: "all" (every step), "off", or "every_N" (steps divisible by N)."""
    if every == "all":
        return True
    if every == "off":
        return False
    return step % int(every.removeprefix("every_")) == 0


class MetricsLogger:
    """A flat ``{name: number}`` record per step (non-finite -> null/left out), sent to every backend of
    ``loggers`` (`funrl.loggers`: jsonl = ``metrics.jsonl``, tensorboard, wandb, mlflow) under the same
    names; see `JsonlLog` for resume behaviour. ``loggers`` must include jsonl: ``metrics.jsonl`` is what
    ``funrl.plot`` reads."""

    def __init__(
        self,
        out_dir: str | os.PathLike,
        resume_step: int | None = None,
        loggers: Sequence[str] = ("jsonl", "tensorboard"),
        project: str = "funrl",
    ) -> None:
        from funrl.loggers import make_backend

        if "jsonl" not in loggers:
            raise ValueError(f"loggers {list(loggers)} must include jsonl (metrics.jsonl)")
        self.path = Path(out_dir) / "metrics.jsonl"
        self.backends: dict = {}
        try:
            for name in dict.fromkeys(loggers):
                self.backends[name] = make_backend(name, out_dir, resume_step, project)
        except BaseException:
            self.close()
            raise

    def log(self, step: int, record: dict[str, float]) -> None:
        clean = {}
        for key, value in record.items():
            value = float(value)
            clean[key] = value if math.isfinite(value) else None
        for backend in self.backends.values():
            backend.log(step, clean)

    def log_config(self, config: dict) -> None:
        """The resolved config (nested plain data, ``funrl.config.to_dict``) to every backend."""
        for backend in self.backends.values():
            backend.log_config(config)

    def log_table(self, name: str, rows: list[dict]) -> None:
        """A small table (one dict per row) to every backend, e.g. the before/after evaluation."""
        for backend in self.backends.values():
            backend.log_table(name, rows)

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()
        self.backends = {}


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All records of a metrics.jsonl (skipping a final line cut by a kill)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
