"""The ``whisper`` encoder kind of ``encoder_adapter_llm``: a transformers ``WhisperEncoder`` on variable-length clips.

Features: transformers' ``WhisperFeatureExtractor`` (log-mel, 25 ms Hann window, 10 ms hop, ``n_mels`` bins,
Whisper's log10 / max-8 / (x+4)/4 scaling) on each clip as it is: no 30 s padding, ``N // 160`` frames for N
samples at 16 kHz. Every frame but the last equals the 30 s padded computation (the STFT pads the clip's end by
reflection instead of with silence).

Encoder: the ``WhisperEncoder``'s own modules, called one by one here (transformers' forward insists on 3000
frames): conv1 (stride 1) + GELU, conv2 (stride 2) + GELU, ``T`` frames -> ``ceil(T / 2)`` (20 ms), plus the
positional table cut to those frames, the transformer layers with padded keys masked, the final LayerNorm.
Padded frames are zeroed after conv1 (so a clip's last frames see zeros, as alone), so a padded batch gives each
clip's own values. Clips longer than ``2 * max_source_positions`` frames (30 s for Whisper's 1500) are refused.

``load_whisper_encoder_weights`` copies the encoder of a converted Whisper folder (`scripts/convert_whisper.py`,
docs/whisper.md) into this encoder, to start an ``encoder_adapter_llm`` from a pretrained Whisper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from torch import Tensor, nn
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from policy.models.base import FeatureBatch

ENCODER_TYPE = "whisper"
SAMPLE_RATE = 16000
HOP = 160
MIN_SAMPLES = 400  # one 25 ms window (the STFT's reflection padding needs more than half of one)


@dataclass(frozen=True)
class WhisperEncoderConfig:
    """``encoder`` section of a ``whisper``-type encoder_adapter_llm config (``"type": "whisper"``)."""

    n_mels: int = 80
    d_model: int = 384
    n_heads: int = 6
    n_layers: int = 4
    ffn_dim: int = 1536
    max_source_positions: int = 1500

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"encoder.{f.name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"encoder.d_model {self.d_model} is not divisible by encoder.n_heads {self.n_heads}")
        if self.d_model % 2:
            raise ValueError(f"encoder.d_model must be even (sinusoidal positions), got {self.d_model}")

    def to_dict(self) -> dict[str, Any]:
        return {"type": ENCODER_TYPE, **asdict(self)}

    def whisper_config(self) -> Any:
        """The transformers ``WhisperConfig`` of this encoder (decoder fields unused)."""
        return transformers.WhisperConfig(
            num_mel_bins=self.n_mels,
            d_model=self.d_model,
            encoder_layers=self.n_layers,
            encoder_attention_heads=self.n_heads,
            encoder_ffn_dim=self.ffn_dim,
            max_source_positions=self.max_source_positions,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            encoder_layerdrop=0.0,
        )


def whisper_features(waves: Sequence[np.ndarray], n_mels: int, extractor: Any = None) -> FeatureBatch:
    """Padded ``FeatureBatch`` ``[B, T_max, n_mels]`` of each clip's unpadded Whisper log-mel (zeros after each)."""
    if len(waves) == 0:
        raise ValueError("whisper_features needs at least one waveform")
    extractor = extractor or transformers.WhisperFeatureExtractor(feature_size=n_mels)
    per_clip = []
    for i, w in enumerate(waves):
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 1 or w.shape[0] < MIN_SAMPLES:
            raise ValueError(
                f"clip {i}: a Whisper encoder needs a 1-D waveform of at least {MIN_SAMPLES} samples "
                f"(25 ms at 16 kHz), got shape {w.shape}"
            )
        out = extractor(w, sampling_rate=SAMPLE_RATE, padding=False, truncation=False, return_tensors="np")
        per_clip.append(out.input_features[0].T.astype(np.float32))  # [T, n_mels]
    lengths = [f.shape[0] for f in per_clip]
    feats = np.zeros((len(per_clip), max(lengths), n_mels), dtype=np.float32)
    for i, f in enumerate(per_clip):
        feats[i, : f.shape[0]] = f
    length_t = torch.tensor(lengths, dtype=torch.long)
    mask = torch.arange(feats.shape[1])[None, :] < length_t[:, None]
    return FeatureBatch(feats=torch.from_numpy(feats), lengths=length_t, mask=mask)


def _valid(lengths: Tensor, width: int) -> Tensor:
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


class WhisperAudioEncoder(nn.Module):
    """log-mel ``[B, T, n_mels]`` + lengths -> states ``[B, ceil(T / 2), d_model]`` (zero after each length) +
    lengths, through a transformers ``WhisperEncoder`` (module doc)."""

    def __init__(self, cfg: WhisperEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.whisper = WhisperEncoder(cfg.whisper_config())
        self._extractor = transformers.WhisperFeatureExtractor(feature_size=cfg.n_mels)

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    def features(self, waves: Sequence[np.ndarray]) -> FeatureBatch:
        return whisper_features(waves, self.cfg.n_mels, self._extractor)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return (lengths + 1) // 2

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.top(*self.below_top(feats, lengths, 0), 0)

    def below_top(self, feats: Tensor, lengths: Tensor, n_top: int) -> tuple[Tensor, Tensor]:
        """States ``[B, ceil(T / 2), d]`` before the last ``n_top`` transformer layers (and the final LayerNorm),
        and their lengths: what an SFT that trains those layers caches (funrl/sft_cache.py)."""
        enc = self.whisper
        limit = 2 * self.cfg.max_source_positions
        if int(lengths.max()) > limit:
            raise ValueError(
                f"a clip of {int(lengths.max())} log-mel frames is longer than the Whisper encoder's "
                f"{limit} ({limit // 100} s): cut the clip (data.max_audio_seconds)"
            )
        x = feats.transpose(1, 2)  # [B, n_mels, T]
        x = x * _valid(lengths, x.shape[-1])[:, None, :].to(x.dtype)
        h = F.gelu(enc.conv1(x)) * _valid(lengths, x.shape[-1])[:, None, :].to(x.dtype)
        h = F.gelu(enc.conv2(h)).transpose(1, 2)  # [B, ceil(T / 2), d]
        out_lengths = self.output_lengths(lengths)
        h = h + enc.embed_positions.weight[: h.shape[1]].to(h.dtype)
        return self._layers(h, out_lengths, enc.layers[: len(enc.layers) - n_top]), out_lengths

    def top(self, h: Tensor, lengths: Tensor, n_top: int) -> tuple[Tensor, Tensor]:
        """The last ``n_top`` transformer layers and the final LayerNorm on ``below_top``'s states; padded frames
        (at and after each length) come out zero."""
        layers = self.whisper.layers
        h = self.whisper.layer_norm(self._layers(h, lengths, layers[len(layers) - n_top :]))
        return h * _valid(lengths, h.shape[1])[:, :, None].to(h.dtype), lengths

    def top_parameters(self, n_top: int) -> list[nn.Parameter]:
        """The weights ``top(.., n_top)`` uses: the last ``n_top`` layers and the final LayerNorm."""
        if not 0 < n_top <= len(self.whisper.layers):
            raise ValueError(f"the Whisper encoder has {len(self.whisper.layers)} layers, not {n_top} to train")
        top = [*self.whisper.layers[len(self.whisper.layers) - n_top :], self.whisper.layer_norm]
        return [p for module in top for p in module.parameters()]

    @staticmethod
    def _layers(h: Tensor, lengths: Tensor, layers: Sequence[nn.Module]) -> Tensor:
        """``layers`` in turn, padded keys (at and after each length) masked out of attention."""
        if len(layers) == 0:
            return h
        valid = _valid(lengths, h.shape[1])
        bias = torch.zeros(valid.shape, dtype=h.dtype, device=h.device)
        bias = bias.masked_fill(~valid, torch.finfo(h.dtype).min)[:, None, None, :]  # [B, 1, 1, T']
        bias = bias.expand(-1, 1, h.shape[1], -1)
        for layer in layers:
            h = layer(h, bias)
        return h


def load_whisper_encoder_weights(encoder: WhisperAudioEncoder, folder: str | Path) -> None:
    """Copy ``model.encoder.*`` (or ``encoder.*``) of a transformers Whisper safetensors folder into ``encoder``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors (convert the checkpoint with scripts/convert_whisper.py)")
    state: dict[str, Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    load_whisper_encoder_state(encoder, state, str(folder))


def load_whisper_encoder_state(encoder: WhisperAudioEncoder, state: dict[str, Tensor], where: str) -> None:
    """Copy the ``model.encoder.*`` (or ``encoder.*``) tensors of a Whisper state dict into ``encoder``;
    ``where`` names the source in errors."""
    own_state = {}
    for k, t in state.items():
        for prefix in ("model.encoder.", "encoder."):
            if k.startswith(prefix):
                own_state[k[len(prefix) :]] = t
    own = encoder.whisper.state_dict()
    missing, unexpected = sorted(set(own) - set(own_state)), sorted(set(own_state) - set(own))
    bad = [
        f"{k}: {tuple(own_state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in own_state and own_state[k].shape != v.shape
    ]
    if missing or unexpected or bad:
        raise ValueError(
            f"{where}: its Whisper encoder does not match encoder {encoder.cfg}: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}, shapes {bad[:4]}"
        )
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(own_state[k].to(v.dtype))


def whisper_encoder_config_from(folder: str | Path) -> WhisperEncoderConfig:
    """The encoder section matching a transformers Whisper folder's ``config.json`` (e.g. a converted one)."""
    return whisper_encoder_config(transformers.WhisperConfig.from_pretrained(folder, local_files_only=True))


def whisper_encoder_config(c: Any) -> WhisperEncoderConfig:
    """The encoder section matching a transformers ``WhisperConfig``."""
    return WhisperEncoderConfig(
        n_mels=c.num_mel_bins,
        d_model=c.d_model,
        n_heads=c.encoder_attention_heads,
        n_layers=c.encoder_layers,
        ffn_dim=c.encoder_ffn_dim,
        max_source_positions=c.max_source_positions,
    )
