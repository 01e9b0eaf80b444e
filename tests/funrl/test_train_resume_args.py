"""``python -m funrl.train --resume OUT`` trains in OUT, whatever run.out_dir its saved config holds (it may be
relative to the working directory of the run that wrote it); an out_dir override alongside is an error."""

from __future__ import annotations

import pytest

from funrl.config import ConfigError, TrainConfig, load_config, save_config
from funrl.train import main, parse_args, resolve_config


@pytest.fixture
def saved_run(tmp_path):
    out = tmp_path / "moved" / "run"
    out.mkdir(parents=True)
    save_config(load_config(None, ["run.out_dir=runs/relative-to-another-cwd", "run.steps=3"]), out / "config.yaml")
    return out


def test_resume_trains_in_the_resumed_folder_not_the_saved_out_dir(saved_run):
    cfg = resolve_config(parse_args(["--resume", str(saved_run), "run.steps=5"]))
    assert isinstance(cfg, TrainConfig) and cfg.run.out_dir == str(saved_run) and cfg.run.steps == 5


def test_resume_with_an_out_dir_override_is_an_error_naming_the_conflict(saved_run, capsys):
    with pytest.raises(ConfigError, match=r"--resume .*run.*continues the run in .*: drop the run.out_dir override"):
        resolve_config(parse_args(["--resume", str(saved_run), "run.out_dir=elsewhere"]))
    assert main(["--resume", str(saved_run), " run.out_dir =elsewhere"]) == 2
    assert "drop the run.out_dir override" in capsys.readouterr().err
