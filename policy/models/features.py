"""80-dim Kaldi log-mel fbank (25 ms window, 10 ms shift) with ``kaldi-native-fbank``, optional global CMVN.

Kaldi defaults otherwise (povey window, pre-emphasis 0.97, DC removal, snip_edges: a clip of N samples gives
``1 + (N - 400) // 160`` frames at 16 kHz, none below 400 samples), dither 0 so features are deterministic.
The waveform (float in [-1, 1]) is scaled by 32768 first, as Kaldi / FireRedASR feed int16-range samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import kaldi_native_fbank as knf
import numpy as np
import torch

from policy.models.base import FeatureBatch


@dataclass(frozen=True)
class FbankConfig:
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    sample_rate: int = 16000
    scale: float = 32768.0  # waveform multiplier before the fbank (int16 range)

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"FbankConfig.{f.name} must be > 0, got {getattr(self, f.name)!r}")

    @property
    def frame_samples(self) -> int:
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def shift_samples(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms / 1000)

    def num_frames(self, num_samples: int) -> int:
        """Frames Kaldi's snip_edges framing gives for ``num_samples`` samples."""
        if num_samples < self.frame_samples:
            return 0
        return 1 + (num_samples - self.frame_samples) // self.shift_samples

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "features") -> "FbankConfig":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{where}: unknown fbank keys {unknown}; known: {[f.name for f in fields(cls)]}")
        return cls(**data)


def _options(cfg: FbankConfig) -> knf.FbankOptions:
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = float(cfg.sample_rate)
    opts.frame_opts.frame_length_ms = float(cfg.frame_length_ms)
    opts.frame_opts.frame_shift_ms = float(cfg.frame_shift_ms)
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = cfg.num_mel_bins
    return opts


def fbank(wave: np.ndarray, cfg: FbankConfig = FbankConfig()) -> np.ndarray:
    """``[T, num_mel_bins]`` float32 log-mel features of one mono waveform."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"fbank expects a 1-D mono waveform, got shape {wave.shape}")
    if cfg.num_frames(wave.shape[0]) == 0:
        raise ValueError(
            f"waveform of {wave.shape[0]} samples is shorter than one {cfg.frame_length_ms:g} ms "
            f"frame ({cfg.frame_samples} samples): no features"
        )
    online = knf.OnlineFbank(_options(cfg))
    online.accept_waveform(float(cfg.sample_rate), wave * cfg.scale)
    online.input_finished()
    return np.stack([online.get_frame(i) for i in range(online.num_frames_ready)]).astype(np.float32)


def fbank_batch(
    waves: Sequence[np.ndarray], cfg: FbankConfig = FbankConfig(), cmvn: tuple[np.ndarray, np.ndarray] | None = None
) -> FeatureBatch:
    """Padded ``FeatureBatch`` ``[B, T_max, F]`` (zeros after each clip) of the clips' fbank features.

    ``cmvn``: global ``(mean [F], inv_std [F])``; features become ``(x - mean) * inv_std`` before padding.
    """
    if len(waves) == 0:
        raise ValueError("fbank_batch needs at least one waveform")
    per_clip = []
    for i, w in enumerate(waves):
        try:
            f = fbank(w, cfg)
        except ValueError as err:
            raise ValueError(f"clip {i}: {err}") from None
        if cmvn is not None:
            f = (f - cmvn[0]) * cmvn[1]
        per_clip.append(f)
    lengths = [f.shape[0] for f in per_clip]
    feats = np.zeros((len(per_clip), max(lengths), cfg.num_mel_bins), dtype=np.float32)
    for i, f in enumerate(per_clip):
        feats[i, : f.shape[0]] = f
    length_t = torch.tensor(lengths, dtype=torch.long)
    mask = torch.arange(feats.shape[1])[None, :] < length_t[:, None]
    return FeatureBatch(feats=torch.from_numpy(feats), lengths=length_t, mask=mask)
