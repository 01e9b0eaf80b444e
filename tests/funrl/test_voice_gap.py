"""scripts/voice_gap.py: the real recordings' texts spoken by the training voice, as is, band-limited and raised."""

from __future__ import annotations

import numpy as np
import soundfile as sf
from script_loader import load_script

from funrl.data import load_manifest, write_manifest


def _module():
    return load_script("voice_gap")


def _band_energy(audio: np.ndarray, lo_hz: float, hi_hz: float) -> float:
    spec = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(audio.size, 1 / 16000)
    return float(spec[(freqs >= lo_hz) & (freqs < hi_hz)].sum())


def test_versions_keep_the_level_cut_the_band_above_4k_and_warp_shortens_by_the_factor():
    rate = 22050
    t = np.arange(rate) / rate  # 1 s: a 1 kHz tone plus a 6 kHz tone
    audio = (0.2 * np.sin(2 * np.pi * 1000 * t) + 0.1 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    v = _module().versions(audio, rate, warp=1.25)
    assert len(v["piper"]) == 16000 and len(v["piper_8k"]) == 16000
    assert abs(len(v["piper_up"]) - 16000 / 1.25) <= 1
    tone = _module().versions(0.1 * np.sin(2 * np.pi * 1000 * t).astype(np.float32), rate, warp=1.25)["piper"]
    assert abs(float(np.abs(tone).max()) - 0.5) < 0.01  # peak-normalised to 0.5
    full, tel = v["piper"], v["piper_8k"]
    assert _band_energy(tel, 5500, 6500) < 1e-4 * _band_energy(full, 5500, 6500)  # 6 kHz gone on the phone line
    assert abs(_band_energy(tel, 900, 1100) / _band_energy(full, 900, 1100) - 1) < 0.02  # 1 kHz intact
    up = v["piper_up"]  # played 1.25x faster: the 1 kHz tone now sits at 1.25 kHz
    assert _band_energy(up, 1200, 1300) > 0.9 * _band_energy(up, 0, 4000)


def test_each_speech_clip_is_spoken_three_ways_and_noise_clips_are_skipped(tmp_path):
    silence = tmp_path / "rec.wav"
    sf.write(silence, np.zeros(8000, np.float32), 16000)
    write_manifest(
        [
            {"audio": str(silence), "text": "Please hold while I try.", "lang": "en"},
            {"audio": str(silence), "text": ""},
        ],
        tmp_path / "real.jsonl",
    )
    assert _module().main([str(tmp_path / "real.jsonl"), str(tmp_path / "out")]) == 0
    lengths = {}
    for name in ("piper", "piper_8k", "piper_up"):
        clips = load_manifest(tmp_path / "out" / f"{name}.jsonl")
        assert [(c.text, c.lang) for c in clips] == [("Please hold while I try.", "en")]
        audio, rate = sf.read(clips[0].audio, dtype="float32")
        assert rate == 16000 and audio.size > 8000  # a spoken sentence, not silence
        lengths[name] = audio.size
    assert abs(lengths["piper"] - lengths["piper_8k"]) <= 1
    assert abs(lengths["piper_up"] - lengths["piper"] / 1.25) <= 2
