"""policy.models.audio.load_audio: any wav/flac -> 16 kHz mono float32; bad files name the path."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from policy.models.audio import load_audio


def _sine(freq: float, rate: int, seconds: float) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate).astype(np.float32)


def test_stereo_44k1_wav_becomes_16k_mono_mean_of_channels(tmp_path):
    left, right = 0.5 * _sine(440, 44100, 1.0), 0.25 * _sine(440, 44100, 1.0)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert wave.shape[0] == 16000  # 44100 samples at 44.1 kHz = 1 s
    expected = 0.375 * _sine(440, 16000, 1.0)  # mean of the channels, resampled
    assert np.abs(wave[500:-500] - expected[500:-500]).max() < 2e-3


def test_flac_16k_int16_reads_back_the_written_samples(tmp_path):
    samples = np.round(0.3 * _sine(1000, 16000, 0.5) * 32767).astype(np.int16)
    path = tmp_path / "clip.flac"
    sf.write(path, samples, 16000, subtype="PCM_16")
    wave = load_audio(path)
    np.testing.assert_allclose(wave, samples / 32768.0, atol=1e-7)


def test_8k_mono_wav_is_upsampled_to_twice_the_samples(tmp_path):
    path = tmp_path / "narrow.wav"
    sf.write(path, 0.2 * _sine(300, 8000, 0.25), 8000)
    wave = load_audio(path)
    assert wave.shape == (4000,)
    assert np.abs(wave[200:-200] - 0.2 * _sine(300, 16000, 0.25)[200:-200]).max() < 2e-3


def test_missing_file_error_names_path(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(ValueError, match=r"nope\.wav: audio file not found"):
        load_audio(path)


def test_unreadable_file_error_names_path(tmp_path):
    path = tmp_path / "text.wav"
    path.write_text("this is not audio")
    with pytest.raises(ValueError, match=r"text\.wav: cannot read audio"):
        load_audio(path)


def test_empty_file_error_names_path(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match=r"empty\.wav: audio file is empty"):
        load_audio(path)


def test_overlong_file_rejected_unless_limit_disabled(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(16000 * 3, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match=r"long\.wav: audio is 3\.00 s long, over the limit of 2 s"):
        load_audio(path, max_seconds=2.0)
    assert load_audio(path, max_seconds=None).shape == (48000,)
    assert load_audio(path, max_seconds=3.0).shape == (48000,)
