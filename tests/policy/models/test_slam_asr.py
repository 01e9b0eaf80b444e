"""The SLAM-ASR builder (`policy.models.slam_asr`, `scripts/build_slam_asr.py`): Whisper tiny.en's encoder goes in
bit for bit, the LLM keeps SmolLM2's tokenizer and chat template, the folder is an ordinary encoder_adapter_llm
checkpoint; `train_adapter_only` leaves the encoder and the LLM unchanged by an SFT step. vLLM agreement of the
built model: tests/policy/models/test_vllm_logprobs.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from policy.models import load_audio_llm
from policy.models.slam_asr import (
    _package_folder,
    build_slam_asr,
    default_llm_source,
    default_whisper_source,
    load_pretrained_llm,
)
from policy.models.whisper_convert import load_whisper_source

SMOLLM2_VOCAB = 49152
ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_built_folder_holds_whisper_tiny_encoder_unchanged_and_smollm2_tokenizer_and_template(slam_asr_tiny_dir):
    model = load_audio_llm(slam_asr_tiny_dir)
    _, whisper_state, _ = load_whisper_source(default_whisper_source())
    encoder = model.frontend.encoder.whisper.state_dict()
    source = {k[len("model.encoder.") :]: v for k, v in whisper_state.items() if k.startswith("model.encoder.")}
    assert set(encoder) == set(source) and len(source) > 50
    for name, tensor in source.items():
        assert torch.equal(encoder[name], tensor.float()), name
    config = json.loads((slam_asr_tiny_dir / "config.json").read_text())
    assert config["encoder"] == {
        "type": "whisper",
        "n_mels": 80,
        "d_model": 384,
        "n_heads": 6,
        "n_layers": 4,
        "ffn_dim": 1536,
        "max_source_positions": 1500,
    }
    assert config["adapter"] == {"splice": 5, "hidden_size": 1024, "llm_hidden_size": 128}
    # the tiny size: SmolLM2's vocabulary and special tokens on a random 2-layer Llama
    llm_config = model.llm.config
    assert (llm_config.model_type, llm_config.num_hidden_layers, llm_config.vocab_size) == ("llama", 2, SMOLLM2_VOCAB)
    tok = model.tokenizer
    assert len(tok) == SMOLLM2_VOCAB and tok.eos_token == "<|im_end|>" and model.eos_token_ids == [2]
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [19556, 905]
    assert model.template.prefix.startswith("<|im_start|>system\n") and "{context}" in model.template.prefix
    assert model.template.suffix.endswith("<|im_end|>\n<|im_start|>assistant\n")
    # 2 s of audio -> 100 Whisper frames (20 ms) -> 20 audio tokens of the LLM's width
    wave = np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.1
    with torch.no_grad():
        (audio,) = model.embed_audio(model.audio_features([wave]))
    assert tuple(audio.shape) == (20, 128)


@pytest.mark.slow
def test_adapter_only_sft_step_moves_the_adapter_and_leaves_encoder_and_llm_unchanged(slam_asr_tiny_dir):
    from funrl.sft import sft_loss
    from policy.models.lora import train_adapter_only

    model = train_adapter_only(load_audio_llm(slam_asr_tiny_dir))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("frontend.adapter.") for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    wave = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    loss, _, _ = sft_loss(model, model.audio_features([wave]), ["hello world"], [None], 0.0)
    loss.backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == trainable


def test_adapter_lora_trains_the_adapter_and_the_lora_matrices_only(tiny_model_dir):
    from policy.config import LoraConfig
    from policy.models.lora import train_adapter_only

    model = train_adapter_only(load_audio_llm(tiny_model_dir), LoraConfig(r=4, alpha=8))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter = {n for n in trainable if n.startswith("frontend.adapter.")}
    lora = {n for n in trainable if ".lora_" in n}
    assert adapter and lora and trainable == adapter | lora
    assert len(lora) == 2 * 4 * model.llm.config.num_hidden_layers  # A and B of q, k, v, o in every layer


def test_llm_source_that_is_neither_gguf_nor_a_safetensors_folder_is_named(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"x")
    for bad in (tmp_path, tmp_path / "model.bin", tmp_path / "missing.gguf"):
        with pytest.raises(FileNotFoundError, match="give a .gguf file or a transformers causal-LM folder"):
            load_pretrained_llm(bad)


def test_missing_source_package_names_the_setup_command():
    with pytest.raises(FileNotFoundError, match=r"not installed: run ./scripts/setup.sh dev \(or give --llm\)"):
        _package_folder("funrl_no_such_package", "SmolLM2-135M-Instruct", "--llm")
    assert default_llm_source().is_file() and default_llm_source().suffix == ".gguf"


def test_gguf_quantization_entry_is_dropped_from_the_dequantised_llms_config():
    import transformers

    from policy.models.slam_asr import plain_config

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=1)
    config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf", "dequantize": False}
    config._model_name_or_path = "Smollm2 135M 8k"
    saved = plain_config(config).to_dict()
    assert "quantization_config" not in saved and "_model_name_or_path" not in saved and saved["vocab_size"] == 64


def test_unknown_size_is_refused_before_anything_loads(tmp_path):
    with pytest.raises(ValueError, match="unknown size 'huge'; known: full, tiny"):
        build_slam_asr(tmp_path / "m", size="huge")


@pytest.mark.slow
def test_build_script_refuses_an_existing_folder(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_slam_asr.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "already exists" in proc.stderr
