"""Adapter registry and load_audio_llm errors; scripts/make_tiny_model.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import policy.models as models
from policy.models import get_adapter, load_audio_llm, register_adapter

ROOT = Path(__file__).resolve().parents[3]


def test_encoder_adapter_llm_is_registered():
    assert "encoder_adapter_llm" in models.SUPPORTED_MODEL_TYPES
    assert models.SUPPORTED_MODEL_TYPES == tuple(sorted(models.ADAPTERS))


def test_unknown_model_type_lists_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper_thing"}))
    with pytest.raises(ValueError, match=r"unknown model_type 'whisper_thing'; supported: .*encoder_adapter_llm"):
        load_audio_llm(tmp_path)


def test_missing_folder_config_and_model_type_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model folder .*nowhere does not exist"):
        load_audio_llm(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing"):
        load_audio_llm(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"config\.json: no 'model_type' key; supported: "):
        load_audio_llm(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        load_audio_llm(tmp_path)


def test_duplicate_registration_raises_and_bad_dtype():
    with pytest.raises(ValueError, match="'encoder_adapter_llm' is already registered"):
        register_adapter("encoder_adapter_llm")(object)
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        models.base.as_dtype("fp8")


def test_make_tiny_model_script_writes_a_loadable_checkpoint(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_tiny_model", ROOT / "scripts" / "make_tiny_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(tmp_path / "m"), "--llm", "qwen3", "--seed", "3"]) == 0
    model = load_audio_llm(tmp_path / "m")
    assert type(model.llm).__name__ == "Qwen3ForCausalLM" and model.model_type == "encoder_adapter_llm"
    assert script.main([str(tmp_path / "x"), "--llm", "gpt9"]) == 2
    assert "unknown LLM family 'gpt9'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        get_adapter("encoder_adapter_llm").build_tiny(tmp_path / "y", size="huge")
