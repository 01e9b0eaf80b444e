"""scripts/ship_demo_model.py: a finished SFT run becomes the demo's starting model, encoder in float16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from script_loader import load_script

from policy.models import get_adapter, load_audio_llm


def _module():
    return load_script("ship_demo_model")


@pytest.fixture
def sft_run(tmp_path) -> Path:
    run = tmp_path / "run"
    get_adapter("encoder_adapter_llm").build_tiny(run / "model", encoder="whisper")
    (run / "config.yaml").write_text("model: {encoder: whisper}\n")
    (run / "train_log.jsonl").write_text('{"step": 1, "loss": 6.0}\n')
    return run


def test_shipped_model_holds_the_encoder_in_float16_and_loads_with_the_rounded_weights(sft_run, tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "start_model").mkdir()
    (assets / "start_model" / "stale.txt").write_text("the previous model")  # replaced, not merged
    _module().main([str(sft_run), "--assets", str(assets)])

    shipped = load_file(str(assets / "start_model" / "frontend.safetensors"))
    original = load_file(str(sft_run / "model" / "frontend.safetensors"))
    halves = {k for k, v in shipped.items() if v.dtype == torch.float16}
    assert halves == {k for k in original if k.startswith("encoder.")}
    assert all(v.dtype == torch.float32 for k, v in shipped.items() if k.startswith("adapter."))
    assert not (assets / "start_model" / "stale.txt").exists()
    assert (assets / "sft_config.yaml").read_text() == (sft_run / "config.yaml").read_text()
    assert (assets / "train_log.jsonl").read_text() == (sft_run / "train_log.jsonl").read_text()
    assert [p.name for p in assets.iterdir() if p.name.startswith(".")] == []  # no temp folders left

    model = load_audio_llm(assets / "start_model")  # fp32 model: the half weights cast back on load
    for name, param in model.frontend.state_dict().items():
        want = original[name].half().float() if name.startswith("encoder.") else original[name]
        torch.testing.assert_close(param, want, rtol=0, atol=0, msg=name)


def test_a_folder_without_a_model_is_refused_with_its_path(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit, match=r"run/model holds no model"):
        _module().main([str(tmp_path / "run"), "--assets", str(tmp_path)])
