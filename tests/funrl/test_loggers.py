"""run.loggers: each backend gets the steps, the config and a table, read back with the backend's own reader
(TensorBoard's EventAccumulator, W&B's protobuf records of the offline run file, MLflow's MlflowClient on the
file store) and compared with metrics.jsonl. Nothing reaches the network: W&B runs offline, MLflow writes files."""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path

import pytest

from funrl.config import ConfigError, load_config
from funrl.loggers import check_available, make_backend
from funrl.metrics import MetricsLogger, read_metrics

STEPS = {
    1: {"reward.wer.mean": 0.25, "kl": 0.5, "loss": float("nan")},
    2: {"reward.wer.mean": 0.5, "kl": 0.125, "loss": 1.5},
    3: {"reward.wer.mean": 0.75, "kl": 0.0625, "loss": -2.0},
}
CONFIG = {"run": {"steps": 3, "loggers": ["jsonl", "wandb"]}, "rewards": {"weights": {"wer": 1.0}}}
TABLE = [{"split": "before", "wer": 0.5, "cer": None}, {"split": "after", "wer": 0.25, "cer": None}]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, nothing outside tmp_path: W&B offline and silent, no telemetry, MLflow's default file store;
    the variables the backends set for themselves are removed again after the test."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    for name in ("WANDB_ERROR_REPORTING", "MLFLOW_DISABLE_TELEMETRY", "MLFLOW_ALLOW_FILE_STORE", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def log_sample_run(
    out: Path, loggers: tuple[str, ...], resume_step: int | None = None, steps: tuple[int, ...] = (1, 2, 3)
) -> None:
    log = MetricsLogger(out, resume_step=resume_step, loggers=loggers, project="funrl-test")
    log.log_config(CONFIG)
    for step in steps:
        log.log(step, STEPS[step])
    log.log_table("eval", TABLE)
    log.close()


def jsonl_values(out: Path) -> dict[tuple[int, str], float]:
    """(step, name) -> value of every finite value in metrics.jsonl."""
    return {
        (r["step"], k): v
        for r in read_metrics(out / "metrics.jsonl")
        for k, v in r.items()
        if k != "step" and v is not None
    }


def test_jsonl_keeps_nonfinite_as_null_and_writes_the_table(tmp_path):
    log_sample_run(tmp_path, ("jsonl",))
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records[0] == {"step": 1, "reward.wer.mean": 0.25, "kl": 0.5, "loss": None}
    assert len(records) == 3
    table = json.loads((tmp_path / "tables" / "eval.json").read_text())
    assert table == {"columns": ["split", "wer", "cer"], "data": [["before", 0.5, None], ["after", 0.25, None]]}


def test_tensorboard_has_the_jsonl_values_the_config_and_the_table(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_sample_run(tmp_path, ("jsonl", "tensorboard"))
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    got = {(e.step, tag.replace("/", ".")): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}
    assert got == pytest.approx(jsonl_values(tmp_path))
    texts = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]}
    assert "steps: 3" in texts["config/text_summary"]
    assert texts["table/eval/text_summary"].splitlines()[2] == "| before | 0.5 |  |"


# ------------------------------------------------------------------------------------------------ W&B


def wandb_records(run_dir: Path) -> list:
    """The protobuf records of an offline run's ``run-ID.wandb`` file. The file is a LevelDB-style log: a 7-byte
    header (":W&B", magic 0xBEE1, version), then 32 KiB blocks of chunks (crc32 u32, length u16, type u8:
    1 full, 2 first, 3 middle, 4 last), a block's last < 7 bytes being padding; the chunks of a record joined
    are one serialised ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, parts, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # padding at the end of a block
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
        elif kind == 0:  # zero-filled tail
            break
    return records


def wandb_history(run_dir: Path) -> list[dict]:
    """One dict per logged step; an item with a nested key (a table's fields) goes into a sub-dict."""
    rows = []
    for rec in wandb_records(run_dir):
        if rec.WhichOneof("record_type") == "history":
            row: dict = {}
            for item in rec.history.item:
                *parents, leaf = [item.key] if item.key else list(item.nested_key)
                node = row
                for parent in parents:
                    node = node.setdefault(parent, {})
                node[leaf] = json.loads(item.value_json)
            rows.append(row)
    return rows


def wandb_config(run_dir: Path) -> dict:
    config = {}
    for rec in wandb_records(run_dir):
        kind = rec.WhichOneof("record_type")
        items = rec.config.update if kind == "config" else rec.run.config.update if kind == "run" else []
        config.update({item.key: json.loads(item.value_json) for item in items})
    return config


def wandb_run_dirs(out: Path) -> list[Path]:
    return sorted(out.glob("wandb/offline-run-*"))


@pytest.mark.slow
def test_wandb_offline_run_has_the_jsonl_values_the_config_and_the_table(tmp_path):
    log_sample_run(tmp_path, ("jsonl", "wandb"))
    (run_dir,) = wandb_run_dirs(tmp_path)
    rows = wandb_history(run_dir)
    got = {
        (row["_step"], k): v
        for row in rows
        for k, v in row.items()
        if not k.startswith("_") and not isinstance(v, dict)
    }
    assert got == jsonl_values(tmp_path)
    assert {k: wandb_config(run_dir)[k] for k in CONFIG} == CONFIG
    (table_ref,) = [row["eval"] for row in rows if "eval" in row]
    table = json.loads((run_dir / "files" / table_ref["path"]).read_text())
    assert table["columns"] == ["split", "wer", "cer"]
    assert table["data"] == [["before", 0.5, None], ["after", 0.25, None]]
    saved = json.loads((tmp_path / "wandb_run.json").read_text())
    assert run_dir.name.endswith(saved["id"])


@pytest.mark.slow
def test_a_resume_continues_the_same_wandb_run(tmp_path):
    log_sample_run(tmp_path, ("jsonl", "wandb"), steps=(1, 2))
    log_sample_run(tmp_path, ("jsonl", "wandb"), resume_step=2, steps=(3,))
    first, second = wandb_run_dirs(tmp_path)
    run_id = json.loads((tmp_path / "wandb_run.json").read_text())["id"]
    # offline-run-<time>-<id>, or -<id>-<n> when both runs start within the same second (wandb's own suffix)
    assert all(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", d.name) for d in (first, second))
    steps = [row["_step"] for row in wandb_history(second) if "kl" in row]
    assert steps == [3]


# --------------------------------------------------------------------------------------------- MLflow


def mlflow_run(out: Path):
    from mlflow.tracking import MlflowClient

    saved = json.loads((out / "mlflow_run.json").read_text())
    assert saved["tracking_uri"] == f"file:{(out / 'mlruns').resolve()}"
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    return client, client.get_run(saved["run_id"])


def test_mlflow_file_store_has_the_jsonl_values_the_config_and_the_table(tmp_path):
    log_sample_run(tmp_path, ("jsonl", "mlflow"))
    client, run = mlflow_run(tmp_path)
    got = {(m.step, key): m.value for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)}
    assert got == jsonl_values(tmp_path)
    assert run.data.params["run.steps"] == "3"
    assert json.loads(run.data.params["run.loggers"]) == ["jsonl", "wandb"]
    assert run.data.params["rewards.weights.wer"] == "1.0"
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "funrl-test"
    folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts")))
    assert json.loads((folder / "config.json").read_text()) == CONFIG
    table = json.loads((folder / "tables" / "eval.json").read_text())
    assert table == {"columns": ["split", "wer", "cer"], "data": [["before", 0.5, None], ["after", 0.25, None]]}


def test_a_resume_logs_into_the_same_mlflow_run(tmp_path):
    log_sample_run(tmp_path, ("jsonl", "mlflow"), steps=(1, 2))
    client, first = mlflow_run(tmp_path)
    log_sample_run(tmp_path, ("jsonl", "mlflow"), resume_step=2, steps=(3,))
    client, run = mlflow_run(tmp_path)
    assert run.info.run_id == first.info.run_id
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "kl")] == [
        (1, 0.5),
        (2, 0.125),
        (3, 0.0625),
    ]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_mlflow_uses_the_tracking_uri_the_user_set(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "elsewhere"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{store}")
    log_sample_run(tmp_path / "run", ("jsonl", "mlflow"), steps=(1,))
    assert not (tmp_path / "run" / "mlruns").exists()
    run_id = json.loads((tmp_path / "run" / "mlflow_run.json").read_text())["run_id"]
    assert MlflowClient(tracking_uri=f"file:{store}").get_run(run_id).data.metrics["kl"] == 0.5


# ------------------------------------------------------------------------------------------ the config


def test_unknown_logger_is_a_config_error_listing_the_choices():
    with pytest.raises(ConfigError, match=r"run.loggers .*'neptune'.*jsonl, tensorboard, wandb, mlflow"):
        load_config(None, ["run.loggers=[jsonl, neptune]"])


def test_loggers_without_jsonl_are_refused():
    with pytest.raises(ConfigError, match="must include jsonl"):
        load_config(None, ["run.loggers=[tensorboard]"])


def test_default_loggers_are_jsonl_and_tensorboard():
    cfg = load_config(None, ["run.loggers=[jsonl, tensorboard, wandb, mlflow]"])
    assert cfg.run.loggers == ("jsonl", "tensorboard", "wandb", "mlflow")
    assert load_config(None, []).run.loggers == ("jsonl", "tensorboard")


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_a_missing_extra_is_named_with_its_pip_command(name, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, name, None)  # what Python sees when the package is not installed
    assert f"pip install 'funrl[{name}]'" in check_available(["jsonl", name])
    assert check_available(["jsonl", "tensorboard"]) is None
    with pytest.raises(RuntimeError, match=rf"pip install 'funrl\[{name}\]'"):
        make_backend(name, tmp_path, None)
