"""Noise for the built-in demo task: white, pink and babble-like; mixing at a given SNR is `policy.augment`'s.

All generators return float32 arrays of unit RMS; scale them to the level you need.
"""

from __future__ import annotations

import numpy as np

from policy.augment import fit_length, mix_at_snr  # the one mixing code: RL augmentation (data.augment) uses it

__all__ = ["NOISE_KINDS", "babble_noise", "fit_length", "make_noise", "mix_at_snr", "pink_noise", "white_noise"]

NOISE_KINDS = ("white", "pink", "babble")


def _unit_rms(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean()
    rms = np.sqrt(np.mean(x**2))
    if not np.isfinite(rms) or rms == 0:
        raise ValueError("noise: cannot normalise a silent or non-finite signal")
    return (x / rms).astype(np.float32)


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise, `n` samples, unit RMS."""
    return _unit_rms(rng.standard_normal(int(n)))


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f ("pink") noise: white noise shaped in the frequency domain (power ∝ 1/f), unit RMS."""
    n = int(n)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0  # the DC bin: removed by _unit_rms anyway
    return _unit_rms(np.fft.irfft(spec / np.sqrt(f), n=n))


def _fft_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    size = 1 << int(np.ceil(np.log2(len(x) + len(h) - 1)))
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)
    return y[: len(x)]


def babble_noise(
    talkers: list[np.ndarray], n: int, rng: np.random.Generator, smear_seconds: float = 0.08, sample_rate: int = 16000
) -> np.ndarray:
    """Babble: several utterances (one per talker) summed at random offsets, looped to `n`
    samples, then smeared by a decaying random impulse response (`smear_seconds` long, like a
    reverberant room), so no single voice stays intelligible. Unit RMS.
    """
    if not talkers:
        raise ValueError("babble_noise: needs at least one talker utterance")
    n = int(n)
    mix = np.zeros(n, dtype=np.float64)
    for speech in talkers:
        speech = np.asarray(speech, dtype=np.float64)
        if speech.size == 0 or not np.any(speech):
            raise ValueError("babble_noise: a talker utterance is silent")
        reps = int(np.ceil((n + speech.size) / speech.size))
        looped = np.tile(speech / np.sqrt(np.mean(speech**2)), reps)
        start = int(rng.integers(0, speech.size))
        mix += looped[start : start + n]
    taps = max(1, int(smear_seconds * sample_rate))
    ir = rng.standard_normal(taps) * np.exp(-np.arange(taps) / (taps / 4.0))
    ir[0] += 1.0  # keep some of the direct sound
    return _unit_rms(_fft_convolve(mix, ir))


def make_noise(kind: str, n: int, rng: np.random.Generator, talkers: list[np.ndarray] | None = None) -> np.ndarray:
    """Unit-RMS noise of `kind` ("white", "pink" or "babble"; babble needs talker utterances)."""
    if kind == "white":
        return white_noise(n, rng)
    if kind == "pink":
        return pink_noise(n, rng)
    if kind == "babble":
        return babble_noise(talkers or [], n, rng)
    raise ValueError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
