"""Online augmentation of RL batches (``data.augment``): speed perturbation, additive noise, gain.

Each clip of a training step is changed the same way wherever its audio is loaded (the embedding worker that
builds the sampler's prompts, and the learner when it recomputes them with ``model.train_encoder``): the random
draws come from ``numpy.random.SeedSequence([seed, step, hash(clip)])``, so a resumed run re-creates the exact
audio of a step, and the sampler and the learner see the same samples. The step travels with the clip
(``Clip.augment_step``, set by the driver); a clip without it (evaluation) is never changed.

Order: speed (soxr resampling, so the duration changes: factor 1.1 -> 1/1.1 of the samples), then noise (a
random file of ``noise_dir``, a random segment, looped when short, mixed at a random SNR against the clip as it
is then), then gain (applied to the mix, so the SNR stays). Nothing is clipped: the features take any level.

`mix_at_snr` and `fit_length` are the project's one noise-mixing code (the demo's data builder uses them too).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import soundfile as sf
import soxr

from policy.config import ConfigError, in_range, validate
from policy.messages import Clip

__all__ = [
    "AUDIO_SUFFIXES",
    "AugmentConfig",
    "Augmenter",
    "apply_gain",
    "at_step",
    "change_speed",
    "clip_key",
    "fit_length",
    "mix_at_snr",
    "noise_files",
]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
SPEED_LIMITS = (0.5, 2.0)


# ---------------------------------------------------------------- the transforms


def fit_length(noise: np.ndarray, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Noise looped or cut to `n` samples (random start when `rng` is given)."""
    noise = np.asarray(noise, dtype=np.float32)
    if noise.size == 0:
        raise ValueError("fit_length: empty noise")
    reps = int(np.ceil((n + noise.size) / noise.size))
    start = int(rng.integers(0, noise.size)) if rng is not None else 0
    return np.tile(noise, reps)[start : start + n]


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`speech + g·noise` with g chosen so that 10·log10(Σspeech² / Σ(g·noise)²) = snr_db.

    Powers are means over the whole clip (silences included). `noise` is looped or cut to the
    length of `speech`. Returns float32; the caller guards against clipping.
    """
    s = np.asarray(speech, dtype=np.float64)
    nz = fit_length(noise, s.size).astype(np.float64)
    p_s, p_n = np.mean(s**2), np.mean(nz**2)
    if not p_s > 0:
        raise ValueError("mix_at_snr: the speech signal is silent")
    if not p_n > 0:
        raise ValueError("mix_at_snr: the noise signal is silent")
    gain = np.sqrt(p_s / (p_n * 10.0 ** (float(snr_db) / 10.0)))
    return (s + gain * nz).astype(np.float32)


def change_speed(wave: np.ndarray, factor: float, sample_rate: int = 16000) -> np.ndarray:
    """Played ``factor`` times as fast (tempo and pitch together, as a tape): soxr resampling from
    ``sample_rate`` to ``sample_rate / factor``, read back at ``sample_rate``; ``len / factor`` samples."""
    if factor == 1.0:
        return wave
    out = soxr.resample(np.asarray(wave, dtype=np.float32), sample_rate, sample_rate / factor, quality="HQ")
    return np.ascontiguousarray(out, dtype=np.float32)


def apply_gain(wave: np.ndarray, gain_db: float) -> np.ndarray:
    """Samples times ``10 ** (gain_db / 20)``."""
    return (np.asarray(wave, dtype=np.float32) * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)


# ---------------------------------------------------------------- config


def noise_files(folder: str | os.PathLike) -> list[Path]:
    """The audio files (``AUDIO_SUFFIXES``) under ``folder``, recursively, in a fixed (sorted) order;
    ValueError when the folder is missing or holds none."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{root} holds no audio file ({', '.join(AUDIO_SUFFIXES)})")
    return files


def _check_noise_dir(folder: str) -> None:
    """Every noise file's header reads and has samples; ConfigError naming the key and the file."""
    key = "data.augment.noise_dir"
    try:
        files = noise_files(folder)
    except ValueError as exc:
        raise ConfigError(
            f"{key}: {exc}: give a folder of noise recordings, or set data.augment.noise_prob=0", key=key
        ) from None
    for path in files:
        try:
            frames = sf.info(str(path)).frames
        except Exception as err:  # noqa: BLE001 - soundfile raises several types by format
            raise ConfigError(
                f"{key}: {path}: cannot read audio ({type(err).__name__}: {err}); remove or replace the file", key=key
            ) from None
        if frames <= 0:
            raise ConfigError(f"{key}: {path}: the audio file is empty; remove it", key=key)


def _range(lo: float | None = None, hi: float | None = None):
    """Check for a ``[low, high]`` pair with ``low <= high``, both inside ``[lo, hi]``."""

    def check(v: tuple[float, float]) -> str | None:
        if v[0] > v[1]:
            return "must be [low, high] with low <= high"
        if (lo is not None and v[0] < lo) or (hi is not None and v[1] > hi):
            return f"must lie within [{lo:g}, {hi:g}]"
        return None

    return check


@dataclass(frozen=True)
class AugmentConfig:
    """``data.augment``: what the RL batches' audio goes through (off by default). Each transform runs on a
    clip with its probability; its amount is drawn uniformly from its ``[low, high]`` range."""

    SECTION: ClassVar[str] = "data.augment"
    enabled: bool = False
    seed: int = 0  # with the step and the clip, seeds every draw
    noise_dir: str = ""  # folder of noise recordings (wav/flac/ogg, searched recursively)
    noise_prob: float = 0.5
    snr_db: tuple[float, float] = (5.0, 20.0)
    speed_prob: float = 0.5
    speed: tuple[float, float] = (0.9, 1.1)  # > 1 plays faster (fewer samples)
    gain_prob: float = 0.5
    gain_db: tuple[float, float] = (-6.0, 6.0)

    def __post_init__(self) -> None:
        prob = in_range(0, 1)
        validate(
            self,
            {
                "seed": in_range(0),
                "noise_prob": prob,
                "speed_prob": prob,
                "gain_prob": prob,
                "snr_db": _range(),
                "speed": _range(*SPEED_LIMITS),
                "gain_db": _range(),
            },
        )
        if not (self.enabled and self.noise_prob > 0):
            return
        if not self.noise_dir:
            raise ConfigError(
                "data.augment.noise_dir is not set but data.augment.noise_prob is "
                f"{self.noise_prob:g}: give a folder of noise recordings, or set "
                "data.augment.noise_prob=0",
                key="data.augment.noise_dir",
            )
        _check_noise_dir(self.noise_dir)


# ---------------------------------------------------------------- per clip


def clip_key(clip: Clip) -> str:
    """What identifies a clip in the seed: its audio path relative to its manifest's folder (so a data set moved
    with its manifest keeps its augmentation), the path itself for a clip without a manifest."""
    if clip.source:
        return os.path.relpath(clip.audio, os.path.dirname(os.path.abspath(clip.source)))
    return clip.audio


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def at_step(clips: Sequence[Clip], step: int) -> list[Clip]:
    """The clips marked for the augmentation of training step ``step``."""
    return [replace(c, augment_step=int(step)) for c in clips]


class Augmenter:
    """Applies an `AugmentConfig` to clips' samples. Noise files are read (and resampled to ``sample_rate``, the
    rate `policy.models.audio.load_audio` returns) once, on first use, and kept."""

    def __init__(self, cfg: AugmentConfig | None = None, sample_rate: int = 16000) -> None:
        self.cfg = cfg or AugmentConfig()
        self.sample_rate = sample_rate
        use_noise = self.cfg.enabled and self.cfg.noise_prob > 0 and self.cfg.noise_dir
        self.files = noise_files(self.cfg.noise_dir) if use_noise else []
        self._noise: dict[int, np.ndarray] = {}

    def __call__(self, wave: np.ndarray, clip: Clip) -> np.ndarray:
        """``wave`` (the clip's samples) augmented for ``clip.augment_step``; unchanged (the same array) when
        augmentation is off or the clip has no step."""
        if not self.cfg.enabled or clip.augment_step is None:
            return wave
        return self.apply(wave, clip.augment_step, clip_key(clip))

    def generators(self, step: int, key: str) -> list[np.random.Generator]:
        """One generator per transform (speed, noise, gain), so one transform's draws never shift another's."""
        seq = np.random.SeedSequence([self.cfg.seed, int(step), _stable_hash(key)])
        return [np.random.default_rng(s) for s in seq.spawn(3)]

    def apply(self, wave: np.ndarray, step: int, key: str) -> np.ndarray:
        cfg = self.cfg
        speed_rng, noise_rng, gain_rng = self.generators(step, key)
        out = np.asarray(wave, dtype=np.float32)
        if speed_rng.random() < cfg.speed_prob:
            out = change_speed(out, float(speed_rng.uniform(*cfg.speed)), self.sample_rate)
        if self.files and noise_rng.random() < cfg.noise_prob:
            out = self._add_noise(out, float(noise_rng.uniform(*cfg.snr_db)), noise_rng)
        if gain_rng.random() < cfg.gain_prob:
            out = apply_gain(out, float(gain_rng.uniform(*cfg.gain_db)))
        return out

    def _add_noise(self, wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
        segment = fit_length(self.noise(int(rng.integers(len(self.files)))), wave.size, rng)
        if not np.any(wave) or not np.any(segment):  # digital silence on either side: no SNR to set
            return wave
        return mix_at_snr(wave, segment, snr_db)

    def noise(self, index: int) -> np.ndarray:
        """Noise file ``index`` at ``sample_rate``, mono (read once)."""
        if index not in self._noise:
            from policy.models.audio import load_audio  # the model package imports transformers: only when used

            samples = load_audio(self.files[index], max_seconds=None, sample_rate=self.sample_rate)
            if not np.any(samples):
                raise ValueError(f"data.augment.noise_dir: {self.files[index]} is silent; remove it")
            self._noise[index] = samples
        return self._noise[index]
