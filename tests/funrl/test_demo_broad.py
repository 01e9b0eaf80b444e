"""``funrl.demo.broad``: seeded broad-vocabulary English sentences, rendered with the demo's voices, and
``data.broad_clips`` putting them among the SFT clips."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("essential_generators")

from funrl.demo import broad

REPO = Path(__file__).resolve().parents[2]


def test_clean_lower_cases_strips_punctuation_and_drops_what_is_not_a_plain_sentence() -> None:
    assert broad._clean("The cat sat on Monday, again.".split()) == "the cat sat on monday again"
    assert broad._clean("It isn't here today.".split()) == "it isn't here today"
    assert broad._clean("The cat sat down".split()) is None  # no full stop: the walk did not end
    assert broad._clean("The cat sat.".split()) is None  # 3 words: under MIN_WORDS
    assert broad._clean("The 3 cats sat down.".split()) is None  # a digit
    assert broad._clean("The cat met Anna and Bob.".split()) is None  # two more capitalised words
    assert broad._clean(("The " + "cat " * 15 + "sat.").split()) is None  # 17 words: over MAX_WORDS


def test_broad_sentences_are_seeded_distinct_plain_and_of_a_broad_vocabulary() -> None:
    a = broad.broad_sentences(300, seed=0)
    assert a == broad.broad_sentences(300, seed=0) and a != broad.broad_sentences(300, seed=1)
    assert len(set(a)) == 300
    assert all(re.fullmatch(r"[a-z]+(?:'[a-z]+)?(?: [a-z]+(?:'[a-z]+)?){3,15}", s) for s in a)
    vocab = {w for s in a for w in s.split()}
    assert len(vocab) > 800  # the demo's own sentences use about 560 words in all


def _high_band_share(wave: np.ndarray, rate: int = 16000, cut: float = 4100.0) -> float:
    power = np.abs(np.fft.rfft(wave.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(wave.size, 1 / rate)
    return float(power[freqs > cut].sum() / power.sum())


def test_telephone_clips_lose_the_band_above_4_khz_and_others_keep_it(tmp_path) -> None:
    spec = next(s for s in broad.plan_broad(12, seed=0) if s.noise_kind is None)
    (tmp_path / "wav").mkdir()
    waves = {}
    for phone in (False, True):
        name, n = broad.render_broad(dataclasses.replace(spec, name=f"c{phone}", telephone=phone), str(tmp_path))
        waves[phone], rate = sf.read(tmp_path / "wav" / f"{name}.wav")
        assert rate == 16000 and n == waves[phone].size
    assert _high_band_share(waves[False]) > 100 * _high_band_share(waves[True])


def test_build_broad_data_writes_a_manifest_of_the_plan_and_reuses_a_finished_build(tmp_path) -> None:
    out = tmp_path / "broad"
    path = broad.build_broad_data(out, 5, seed=2, progress=False)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["text"] for r in rows] == broad.broad_sentences(5, seed=2)
    assert all(r["lang"] == "en" and (out / r["audio"]).is_file() for r in rows)
    stamp = (out / "DONE").stat().st_mtime_ns
    assert broad.build_broad_data(out, 5, seed=2, progress=False) == path
    assert (out / "DONE").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert not list(tmp_path.glob(".broad.building-*"))
    broad.build_broad_data(out, 3, seed=2, progress=False)  # other parameters: rebuilt in place
    assert len(path.read_text().splitlines()) == 3


def test_build_broad_data_refuses_a_folder_of_foreign_files(tmp_path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="did not write"):
        broad.build_broad_data(tmp_path, 3, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.slow
def test_sft_data_holds_the_broad_clips_beside_the_demo_clips(small_demo_data, tmp_path) -> None:
    from funrl.sft_config import load_sft_config
    from funrl.sft_data import load_data

    over = [f"data.demo_dir={small_demo_data.root}", "data.demo_size=small", "data.curriculum_steps=0"]
    over += ["data.broad_clips=4", f"data.broad_dir={tmp_path / 'broad'}"]
    data = load_data(load_sft_config(str(REPO / "funrl/demo/sft.yaml"), over), tmp_path)
    texts = [c.text for c in data.clips]
    assert texts[-4:] == broad.broad_sentences(4, seed=0) and len(data.waves) == len(data.clips)
