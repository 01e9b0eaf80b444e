"""scripts/real_speech_manifest.py: which Asterisk prompts it keeps, and that their audio reaches 16 kHz intact."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import soundfile as sf
from script_loader import load_script

from funrl.data import load_manifest


def _module():
    return load_script("real_speech_manifest")


def test_prompts_are_kept_by_words_and_text_and_resampled_to_16k(tmp_path):
    sounds = tmp_path / "en_US_f_Allison"
    (sounds / "followme").mkdir(parents=True)
    tone = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype(np.float32) * 0.5  # 1 s at 8 kHz
    for name in ("agent-pass", "followme/agent-pass", "press-4", "added", "visit-web", "beep"):
        sf.write(sounds / f"{name}.wav", tone, 8000, subtype="PCM_16")
    sf.write(sounds / "long-one.wav", np.tile(tone, 21), 8000, subtype="PCM_16")  # 21 s: over --max-seconds 20
    lines = [
        "; Core Asterisk Sounds in English",
        "agent-pass: Please enter your password... followed by the pound key.",
        "followme/agent-pass: Please hold while I try.",
        "press-4: Press 4 to mark this message as urgent.",  # a digit: spoken form ambiguous
        "added: Added.",  # one word
        "visit-web: For more information, visit www.asterisk.org.",
        "missing-file: There is no recording for this one.",
        "long-one: A prompt that runs on for far too long.",
        "beep: [this is a simple beep tone]",  # no speech: described, not spoken
    ]
    script = tmp_path / "core-sounds-en.txt.gz"
    with gzip.open(script, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    assert _module().main([str(sounds), str(script), str(tmp_path / "out")]) == 0
    clips = load_manifest(tmp_path / "out" / "real_speech.jsonl")
    assert [c.text for c in clips] == [
        "Please enter your password followed by the pound key.",
        "Please hold while I try.",
    ]
    assert {Path(c.audio).name for c in clips} == {"agent-pass.wav", "followme__agent-pass.wav"}
    audio, rate = sf.read(clips[0].audio, dtype="float32")
    assert rate == 16000 and len(audio) == 16000 and all(c.lang == "en" for c in clips)
    assert abs(float(np.abs(audio).max()) - 0.5) < 0.02  # the level survives the resampling


def test_a_missing_folder_exits_2_naming_it(tmp_path, capsys):
    assert _module().main([str(tmp_path / "nope"), str(tmp_path / "s.txt"), str(tmp_path / "out")]) == 2
    assert "nope does not exist" in capsys.readouterr().err


def test_non_speech_wavs_become_evenly_spaced_four_second_noise_clips(tmp_path):
    sounds, music = tmp_path / "en_US_f_Allison", tmp_path / "moh"
    sounds.mkdir()
    music.mkdir()
    sf.write(sounds / "agent-pass.wav", np.zeros(8000, np.float32), 8000, subtype="PCM_16")
    ramp = np.linspace(-0.5, 0.5, 8000 * 20, dtype=np.float32)  # 20 s at 8 kHz: where a piece starts shows
    sf.write(music / "song.wav", ramp, 8000, subtype="PCM_16")
    sf.write(music / "short.wav", ramp[:8000], 8000, subtype="PCM_16")  # 1 s: too short for a piece, skipped
    script = tmp_path / "s.txt"
    script.write_text("agent-pass: Please enter your password.\n")
    out = tmp_path / "out"
    assert _module().main([str(sounds), str(script), str(out), "--non-speech", str(music), "--segments", "3"]) == 0
    clips = load_manifest(out / "real_speech.jsonl")
    noise = [c for c in clips if c.text == ""]
    assert [Path(c.audio).name for c in noise] == [f"nonspeech__song_{k:02d}.wav" for k in range(3)]
    firsts = []
    for c in noise:
        audio, rate = sf.read(c.audio, dtype="float32")
        assert rate == 16000 and len(audio) == 4 * 16000 and c.lang is None
        firsts.append(float(audio[100]))
    # pieces start at 0, 8 and 16 s of the 20-s ramp: -0.5, -0.1, +0.3 (give or take the resampler's edge)
    assert np.allclose(firsts, [-0.5, -0.1, 0.3], atol=0.01)
