"""policy.models.features: Kaldi fbank (25 ms / 10 ms, 80 bins) vs an independent numpy implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy.models.features import FbankConfig, fbank, fbank_batch


def _mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)


def numpy_kaldi_fbank(wave: np.ndarray, bins: int = 80) -> np.ndarray:
    """Kaldi's compute-fbank-feats defaults (povey window, preemph 0.97, DC removal, snip_edges,
    512-point FFT power spectrum, mel bins 20 Hz..Nyquist), float64, dither 0, input scaled to int16 range."""
    x = wave.astype(np.float64) * 32768.0
    n = 1 + (len(x) - 400) // 160
    frames = np.stack([x[i * 160 : i * 160 + 400] for i in range(n)])
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames[:, 1:] = frames[:, 1:] - 0.97 * frames[:, :-1]
    frames[:, 0] = frames[:, 0] * (1 - 0.97)
    frames = frames * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 399)) ** 0.85
    power = np.abs(np.fft.rfft(frames, n=512, axis=1)) ** 2
    lo, hi = _mel(20.0), _mel(8000.0)
    delta = (hi - lo) / (bins + 1)
    mels = _mel(np.arange(256) * 16000 / 512)
    weights = np.zeros((bins, 256))
    for b in range(bins):
        left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        up = (mels > left) & (mels <= center)
        down = (mels > center) & (mels < right)
        weights[b, up] = (mels[up] - left) / (center - left)
        weights[b, down] = (right - mels[down]) / (right - center)
    energies = power[:, :256] @ weights.T
    return np.log(np.maximum(energies, np.finfo(np.float32).eps))


def test_fbank_matches_numpy_kaldi_reference():
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(8000) + 0.3 * np.sin(np.arange(8000) * 0.05)).astype(np.float32)
    ours = fbank(wave)
    ref = numpy_kaldi_fbank(wave)
    assert ours.shape == ref.shape == (48, 80)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("samples, frames", [(400, 1), (559, 1), (560, 2), (16000, 98), (80000, 498)])
def test_frame_count_is_snip_edges_rule(samples, frames):
    # 1 + (N - 400) // 160 at 16 kHz (25 ms window, 10 ms shift)
    assert FbankConfig().num_frames(samples) == frames
    assert fbank(np.zeros(samples, dtype=np.float32) + 0.01).shape == (frames, 80)


def test_fbank_is_deterministic_no_dither():
    wave = np.random.default_rng(1).standard_normal(4000).astype(np.float32) * 0.1
    assert np.array_equal(fbank(wave), fbank(wave))


def test_batch_pads_with_zeros_and_reports_lengths():
    rng = np.random.default_rng(2)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 4000, 560)]
    batch = fbank_batch(waves)
    assert batch.feats.shape == (3, 98, 80) and batch.lengths.tolist() == [98, 23, 2]
    assert batch.mask.sum(1).tolist() == [98, 23, 2]
    for i, w in enumerate(waves):
        n = int(batch.lengths[i])
        np.testing.assert_array_equal(batch.feats[i, :n].numpy(), fbank(w))
        assert torch.all(batch.feats[i, n:] == 0)


def test_cmvn_applies_mean_and_inverse_std_before_padding():
    rng = np.random.default_rng(3)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (3200, 1600)]
    mean, istd = rng.standard_normal(80).astype(np.float32), rng.uniform(0.5, 2, 80).astype(np.float32)
    batch = fbank_batch(waves, cmvn=(mean, istd))
    np.testing.assert_allclose(batch.feats[1, :8].numpy(), (fbank(waves[1]) - mean) * istd, rtol=1e-6)
    assert torch.all(batch.feats[1, 8:] == 0)


def test_clip_shorter_than_one_frame_error_names_clip():
    with pytest.raises(ValueError, match=r"clip 1: waveform of 399 samples is shorter than one 25 ms frame"):
        fbank_batch([np.zeros(800, np.float32), np.zeros(399, np.float32)])
