"""The entry points take model.path / --model as a Hub id from the local HF cache and resolve it once, before
any worker, Ray or vLLM starts (train, eval, export, sft); an uncached id exits 2 naming the download command.
The cache is the ``hub_cache`` fixture (a real Hub cache layout) holding the session's tiny checkpoint."""

from __future__ import annotations

import json
from argparse import Namespace

import numpy as np
import pytest
import soundfile as sf

from funrl.config import ConfigError, load_config

REPO = "funrl-test/tiny-asr"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MISSING = "acme/asr-large"


def _manifest(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(1600, dtype=np.float32), 16000)
    man = tmp_path / "m.jsonl"
    man.write_text(json.dumps({"audio": "a.wav", "text": "hi"}) + "\n")
    return man


def test_train_config_gets_the_cached_snapshot_folder(hub_cache, tiny_model_dir):
    from funrl.inputs import with_local_model

    snapshot = hub_cache.add(tiny_model_dir, REPO, COMMIT)
    cfg = load_config(None, [f"model.path={REPO}@main", "data.train_manifest=t.jsonl", "model.dtype=bfloat16"])
    local = with_local_model(cfg)
    assert local.model.path == str(snapshot) and local.model.dtype == "bfloat16"
    assert local.data == cfg.data and local.learner == cfg.learner
    folder_cfg = load_config(None, [f"model.path={tiny_model_dir}"])
    assert with_local_model(folder_cfg) is folder_cfg  # a local folder is kept as given


def test_train_rejects_a_cached_snapshot_of_an_unsupported_model_type(hub_cache, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "whisper_thing"}))
    hub_cache.add(tmp_path / "m", REPO, COMMIT)
    from funrl.inputs import with_local_model

    with pytest.raises(
        ConfigError,
        match=r"model\.path funrl-test/tiny-asr: .*config\.json: unknown model_type "
        r"'whisper_thing'",
    ) as err:
        with_local_model(load_config(None, [f"model.path={REPO}"]))
    assert err.value.key == "model.path"


def test_train_cli_uncached_id_exits_2_before_anything_starts(hub_cache, tmp_path, capsys):
    from funrl.train import main

    out = tmp_path / "run"
    code = main([f"model.path={MISSING}", f"data.train_manifest={tmp_path / 'none.jsonl'}", f"run.out_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith(f"error: model.path '{MISSING}': no such local folder")
    assert f"`hf download {MISSING}`" in err and str(hub_cache) in err and not out.exists()


def test_eval_accepts_a_cached_id_and_names_an_uncached_one(hub_cache, tiny_model_dir, tmp_path, capsys):
    from funrl.eval import _checked_inputs, _parser, main

    snapshot = hub_cache.add(tiny_model_dir, REPO, COMMIT)
    man = _manifest(tmp_path)
    clips, folder = _checked_inputs(_parser().parse_args(["--model", REPO, "--manifest", str(man)]))
    assert folder == snapshot and [c.text for c in clips] == ["hi"]
    assert main(["--model", MISSING, "--manifest", str(man), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --model '{MISSING}': no such local folder")
    assert f"`hf download {MISSING}`" in lines[0]


def test_export_resolves_a_hub_id_in_the_runs_config(hub_cache, tiny_model_dir, tmp_path):
    from funrl.export import ExportError, check_inputs

    hub_cache.add(tiny_model_dir, REPO, COMMIT)
    args = Namespace(run_dir=str(tmp_path), step=None, out=str(tmp_path / "out"), device="cpu")
    (tmp_path / "config.yaml").write_text(f"model:\n  path: {MISSING}\n")
    with pytest.raises(ExportError, match=rf"config\.yaml: model\.path '{MISSING}': .*`hf download {MISSING}`"):
        check_inputs(args)
    (tmp_path / "config.yaml").write_text(f"model:\n  path: {REPO}\n")
    with pytest.raises(ExportError, match="no complete checkpoint"):  # the model check passed
        check_inputs(args)


def test_sft_takes_a_cached_id_and_exits_2_on_an_uncached_one(hub_cache, tiny_model_dir, tmp_path, capsys):
    from funrl.sft import main

    hub_cache.add(tiny_model_dir, REPO, COMMIT)
    none = tmp_path / "none.jsonl"
    assert main([f"model.path={MISSING}", f"data.train_manifest={none}", f"run.out_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert f"`hf download {MISSING}`" in err and not (tmp_path / "o").exists()
    assert main([f"model.path={REPO}", f"data.train_manifest={none}", f"run.out_dir={tmp_path / 'o'}"]) == 2
    assert "none.jsonl" in capsys.readouterr().err  # past the model: the missing manifest is what stops it
