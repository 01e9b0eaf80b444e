"""Tracking backends for a run's metrics: ``run.loggers`` picks any of jsonl, tensorboard, wandb, mlflow.

Every backend has the same four calls, made by `funrl.metrics.MetricsLogger`, which owns one per name:

* ``log(step, record)``: one step's flat ``{name: value}`` record (``None`` = non-finite, kept only by jsonl);
  every backend uses the same metric names as ``metrics.jsonl`` (``reward.wer.mean``, ``kl``, ...);
* ``log_config(config)``: the resolved config as nested plain data (``funrl.config.to_dict``);
* ``log_table(name, rows)``: a small table, one dict per row (the before/after evaluation);
* ``close()``.

W&B and MLflow are optional extras, imported only when named (``pip install funrl[wandb]`` /
``funrl[mlflow]``). Neither reaches a server unless the user asks: W&B runs offline (files under
``OUT/wandb``, ``wandb sync`` uploads them later) unless ``WANDB_MODE`` is set; MLflow writes a local file
store in ``OUT/mlruns`` unless ``MLFLOW_TRACKING_URI`` is set. Each stores its run id in the run folder
(``OUT/wandb_run.json``, ``OUT/mlflow_run.json``), so ``--resume OUT`` continues the same tracked run.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from funrl.data import write_text_atomic

__all__ = ["LOGGERS", "Backend", "LoggerError", "make_backend", "table_columns", "flatten"]

LOGGERS = ("jsonl", "tensorboard", "wandb", "mlflow")
WANDB_ID_FILE = "wandb_run.json"
MLFLOW_ID_FILE = "mlflow_run.json"


class LoggerError(RuntimeError):
    """A backend cannot start (its extra is not installed, its run-id file is unreadable)."""


class Backend(Protocol):
    def log(self, step: int, record: Mapping[str, float | None]) -> None: ...
    def log_config(self, config: Mapping[str, Any]) -> None: ...
    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None: ...
    def close(self) -> None: ...


def table_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of the rows, in first-seen order (a row missing one gets None there)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"run": {"steps": 3}}`` -> ``{"run.steps": 3}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _import(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise LoggerError(
            f"run.loggers names {extra}, but {module} is not installed ({exc}): "
            f"pip install 'funrl[{extra}]', or drop {extra} from run.loggers"
        ) from None


def _read_id_file(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LoggerError(
            f"{path}: cannot read the tracked run's id ({exc}); delete the file to start a new "
            "tracked run for this folder"
        ) from None
    if not isinstance(data, dict):
        raise LoggerError(f"{path}: expected a JSON object with the run id; delete it to start a new tracked run")
    return data


# ------------------------------------------------------------------------------------------------ jsonl


class JsonlBackend:
    """``OUT/metrics.jsonl`` (`funrl.metrics.JsonlLog`: a resume drops the lines past the checkpoint) and
    ``OUT/tables/NAME.json`` (``{"columns": [...], "data": [[...], ...]}``). The config is already in
    ``OUT/config.yaml``, written by the driver before any logger starts, so ``log_config`` adds nothing."""

    def __init__(self, out_dir: Path, resume_step: int | None) -> None:
        from funrl.metrics import JsonlLog

        self.out_dir = out_dir
        self.file = JsonlLog(out_dir / "metrics.jsonl", resume_step)

    def log(self, step: int, record: Mapping[str, float | None]) -> None:
        self.file.write(step, dict(record))

    def log_config(self, config: Mapping[str, Any]) -> None:
        return None

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        columns = table_columns(rows)
        (self.out_dir / "tables").mkdir(exist_ok=True)
        body = {"columns": columns, "data": [[row.get(c) for c in columns] for row in rows]}
        write_text_atomic(self.out_dir / "tables" / f"{name}.json", json.dumps(body, indent=1) + "\n")

    def close(self) -> None:
        self.file.close()


# ------------------------------------------------------------------------------------------ tensorboard


class TensorBoardBackend:
    """``OUT/tensorboard``: scalars under the metric name with ``.`` -> ``/`` (TensorBoard groups by ``/``);
    the config and tables as text. A resume purges the steps after the checkpoint (``purge_step``)."""

    def __init__(self, out_dir: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_step + 1 if resume_step else None
        self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, record: Mapping[str, float | None]) -> None:
        for key, value in record.items():
            if value is not None:
                self.writer.add_scalar(key.replace(".", "/"), value, step)
        self.writer.flush()

    def log_config(self, config: Mapping[str, Any]) -> None:
        import yaml

        text = yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)
        self.writer.add_text("config", "```yaml\n" + text + "```")  # markdown code block: kept as is
        self.writer.flush()

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        columns = table_columns(rows)
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += [
            "| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |" for row in rows
        ]
        self.writer.add_text(f"table/{name}", "\n".join(lines))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ------------------------------------------------------------------------------------------------ wandb


class WandbBackend:
    """Weights & Biases: ``wandb.init(mode="offline", dir=OUT)`` unless ``WANDB_MODE`` is set (then W&B's own
    setting applies); the run id is kept in ``OUT/wandb_run.json`` and a resume continues that run
    (``resume="allow"``). Steps re-run after a resume are logged again: in W&B a step keeps the values logged
    first (unlike metrics.jsonl and TensorBoard, which keep the re-run's)."""

    def __init__(self, out_dir: Path, resume_step: int | None, project: str) -> None:
        wandb = _import("wandb", "wandb")
        self._wandb, self._table = wandb, wandb.Table
        id_file = out_dir / WANDB_ID_FILE
        saved = _read_id_file(id_file)
        run_id = saved["id"] if saved and "id" in saved else secrets.token_hex(6)  # W&B ids: [a-z0-9]
        if saved is None:
            write_text_atomic(id_file, json.dumps({"id": run_id, "project": project}) + "\n")
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # no crash reports to W&B's Sentry
        kwargs: dict[str, Any] = {} if os.environ.get("WANDB_MODE") else {"mode": "offline"}
        self.run = wandb.init(
            project=project,
            name=out_dir.resolve().name,
            id=run_id,
            resume="allow",
            dir=str(out_dir),
            settings=wandb.Settings(console="off"),
            **kwargs,
        )

    def log(self, step: int, record: Mapping[str, float | None]) -> None:
        self.run.log({k: v for k, v in record.items() if v is not None}, step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)  # a resume may override keys

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        columns = table_columns(rows)
        self.run.log({name: self._table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])})

    def close(self) -> None:
        self.run.finish()
        self._wandb.teardown()  # waits for the W&B service to write the run file; finish() may return first


# ----------------------------------------------------------------------------------------------- mlflow


class MlflowBackend:
    """MLflow through ``MlflowClient`` (no global active run): tracking URI ``MLFLOW_TRACKING_URI`` or the
    file store ``file:OUT/mlruns`` (MLflow 3 keeps file stores behind ``MLFLOW_ALLOW_FILE_STORE``, which is
    set for it), experiment ``run.project``. The run id is kept in ``OUT/mlflow_run.json`` and a resume logs
    into the same run. The config goes in as parameters (dotted keys, logged once: MLflow refuses to change
    a parameter) and as the artifact ``config.json`` (rewritten on each start); tables as artifacts
    ``tables/NAME.json`` in MLflow's table format. Steps re-run after a resume get a second value in
    MLflow's history for that step."""

    def __init__(self, out_dir: Path, resume_step: int | None, project: str) -> None:
        _import("mlflow", "mlflow")
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"file:{(out_dir / 'mlruns').resolve()}"
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        id_file = out_dir / MLFLOW_ID_FILE
        saved = _read_id_file(id_file)
        self.resumed = bool(saved and saved.get("run_id"))
        if saved and self.resumed:
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            experiment = self.client.get_experiment_by_name(project)
            exp_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
            self.run_id = self.client.create_run(exp_id, run_name=out_dir.resolve().name).info.run_id
            write_text_atomic(id_file, json.dumps({"run_id": self.run_id, "tracking_uri": uri}) + "\n")
        self._metric = Metric

    def log(self, step: int, record: Mapping[str, float | None]) -> None:
        import time

        now = int(time.time() * 1000)
        metrics = [self._metric(k, float(v), now, step) for k, v in record.items() if v is not None]
        for i in range(0, len(metrics), 1000):  # MLflow's per-call limit
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.client.log_dict(self.run_id, dict(config), "config.json")
        if self.resumed:
            return
        params = [_param(k, v) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow's per-call limit for parameters
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        columns = table_columns(rows)
        body = {"columns": columns, "data": [[row.get(c) for c in columns] for row in rows]}
        self.client.log_dict(self.run_id, body, f"tables/{name}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED")


def _param(key: str, value: Any):
    from mlflow.entities import Param

    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return Param(key, text[:6000])  # MLflow's longest parameter value


def make_backend(name: str, out_dir: str | os.PathLike, resume_step: int | None, project: str = "funrl") -> Backend:
    """The backend ``name`` (one of `LOGGERS`) writing into the run folder ``out_dir``."""
    out = Path(out_dir)
    if name == "jsonl":
        return JsonlBackend(out, resume_step)
    if name == "tensorboard":
        return TensorBoardBackend(out, resume_step)
    if name == "wandb":
        return WandbBackend(out, resume_step, project)
    if name == "mlflow":
        return MlflowBackend(out, resume_step, project)
    raise LoggerError(f"unknown logger {name!r}: choose from {', '.join(LOGGERS)}")


def check_available(names: Sequence[str]) -> str | None:
    """Why the optional backends among ``names`` cannot start (their package is missing), or None; found
    without importing them, so a run can refuse before it writes anything."""
    import importlib.util

    missing = [
        name
        for name, module in (("wandb", "wandb"), ("mlflow", "mlflow"))
        if name in names and importlib.util.find_spec(module) is None
    ]
    if not missing:
        return None
    return (
        f"run.loggers names {', '.join(missing)}, which is not installed: "
        + "; ".join(f"pip install 'funrl[{m}]'" for m in missing)
        + ", or drop it from run.loggers"
    )
