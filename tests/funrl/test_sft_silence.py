"""``data.silence_clips``: seeded near-silent clips with an empty target among the SFT clips, never joined."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from funrl.sft_augment import concat_pairs
from funrl.sft_silence import silence_clips
from policy.messages import Clip

REPO = Path(__file__).resolve().parents[2]


def _dbfs(wave: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(wave.astype(np.float64) ** 2))))


def test_silence_clips_are_seeded_room_tone_at_minus_80_to_60_dbfs_with_empty_targets() -> None:
    clips, waves = silence_clips(20, seed=3)
    again, waves_again = silence_clips(20, seed=3)
    assert clips == again and all(np.array_equal(a, b) for a, b in zip(waves, waves_again))
    assert not np.array_equal(silence_clips(1, seed=4)[1][0][:16000], waves[0][:16000])
    assert all(c.text == "" and c.source == "data.silence_clips" for c in clips)
    assert [c.line for c in clips] == list(range(1, 21))
    levels = [_dbfs(w) for w in waves]
    assert all(-80.01 <= x <= -59.99 for x in levels) and max(levels) - min(levels) > 5
    assert all(16000 <= len(w) <= 80000 and w.dtype == np.float32 for w in waves)
    assert f"{levels[0]:.0f} dBFS" in clips[0].audio  # a message naming the clip says what it is


def test_babble_share_puts_distant_talk_of_the_given_speech_under_the_first_clips_at_the_same_level() -> None:
    t = np.arange(32000) / 16000
    talkers = [np.sin(2 * np.pi * 500 * (i + 1) * t).astype(np.float32) for i in range(8)]  # tones 0.5-4 kHz
    clips, waves = silence_clips(9, seed=1, babble_share=1 / 3, talkers=talkers)
    plain, plain_waves = silence_clips(9, seed=1)
    assert [c.audio.startswith("<room tone with distant talk") for c in clips] == [True] * 3 + [False] * 6
    assert all(-80.01 <= _dbfs(w) <= -59.99 for w in waves)  # the same room-tone levels, babble included
    assert len(waves[0]) == len(plain_waves[0])  # the first clip draws its length and level before its babble

    def tone_share(wave: np.ndarray) -> float:  # of the power, in the talkers' tones (+-20 Hz, smeared)
        power = np.abs(np.fft.rfft(wave.astype(np.float64))) ** 2
        freqs = np.fft.rfftfreq(len(wave), 1 / 16000)
        near = np.min(np.abs(freqs[:, None] - 500 * np.arange(1, 9)[None, :]), axis=1) <= 20
        return float(power[near].sum() / power.sum())

    assert min(tone_share(w) for w in waves[:3]) > 0.3 > 0.05 > tone_share(plain_waves[0])
    assert all(c.text == "" for c in clips)
    with pytest.raises(ValueError, match="data.silence_babble: babble needs at least 6 speech clips, got 2"):
        silence_clips(3, seed=0, babble_share=0.5, talkers=talkers[:2])
    assert silence_clips(3, seed=0, babble_share=0.1, talkers=())[0] == silence_clips(3, seed=0)[0]  # rounds to 0


def test_noise_only_clips_are_never_joined_to_speech_or_to_each_other() -> None:
    speech = [Clip(audio=f"s{i}.wav", text=f"word{i}", lang="en") for i in range(3)]
    quiet, quiet_waves = silence_clips(3, seed=0)
    pool = speech + quiet
    audio = {id(c): np.full(10 * (i + 1), i, dtype=np.float32) for i, c in enumerate(speech)}
    audio |= {id(c): w for c, w in zip(quiet, quiet_waves)}
    waves, texts, _ = concat_pairs(pool, audio, pool, 1.0, np.random.default_rng(0))  # prob 1: join every one
    assert texts[3:] == ["", "", ""] and all(np.array_equal(w, audio[id(c)]) for w, c in zip(waves[3:], quiet))
    assert all(len(t.split()) == 2 and t.startswith(f"word{i} word") for i, t in enumerate(texts[:3]))


@pytest.mark.slow
def test_sft_data_holds_the_silence_clips_beside_the_speech_clips(small_demo_data, tmp_path) -> None:
    from funrl.sft_config import load_sft_config
    from funrl.sft_data import load_data

    over = [f"data.demo_dir={small_demo_data.root}", "data.demo_size=small", "data.silence_clips=7"]
    cfg = load_sft_config(str(REPO / "funrl/demo/sft.yaml"), [*over, "data.curriculum_steps=0"])
    data = load_data(cfg, tmp_path)
    quiet = [c for c in data.clips if c.source == "data.silence_clips"]
    assert len(quiet) == 7 and all(c.text for c in data.clips if c not in quiet)  # speech clips + the 7
    assert len(data.waves) == len(data.clips)
