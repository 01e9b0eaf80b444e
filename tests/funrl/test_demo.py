"""The built-in demo task: local TTS, noise and SNR mixing, and the cached, deterministic,
split-by-sentence data builder (funrl/demo/)."""

from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from funrl.data import load_manifest
from funrl.demo import noise, text, tts
from funrl.demo.build import SPLITS, build_demo_data, cache_key, check_split_by_sentence, is_built
from funrl.demo.plan import DemoSizes, plan_clips
from funrl.demo.render import ClipSpec, render_audio, to_pcm16

SR = 16000


def _voiced_seconds(x: np.ndarray, frame: int = 320) -> float:
    """Seconds of 20 ms frames within 30 dB of the loudest frame."""
    n = len(x) // frame
    e = np.sqrt(np.mean(x[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    return float(np.sum(e > e.max() * 10 ** (-30 / 20)) * frame / SR)


@pytest.mark.parametrize(
    "voice,sentence,lo,hi",
    [
        ("en+m3", "the children walk to school every morning", 1.2, 4.5),
        ("en+f2", "the children walk to school every morning", 1.2, 4.5),
        ("cmn", "我们今天早上去学校", 1.0, 5.0),
    ],
)
def test_espeak_speaks_16k_audio_of_plausible_length(voice, sentence, lo, hi):
    x = tts.get_espeak().synth(sentence, voice, rate=175, pitch=50)
    assert x.dtype == np.float32 and x.ndim == 1
    assert lo <= len(x) / SR <= hi and lo * 0.6 <= _voiced_seconds(x)
    assert 0.01 < np.sqrt(np.mean(x**2)) and np.max(np.abs(x)) <= 1.0
    slow = tts.get_espeak().synth(sentence, voice, rate=100, pitch=50)
    assert len(slow) > 1.4 * len(x)


def test_espeak_is_a_pure_function_of_its_arguments():
    e = tts.get_espeak()
    a = e.synth("hello there friend", "en+m1", 150, 30)
    e.synth("something else entirely in between", "en+f4", 210, 70)
    e.synth("我们", "cmn")
    assert np.array_equal(a, e.synth("hello there friend", "en+m1", 150, 30))
    high = e.synth("hello there friend", "en+m1", 150, 90)
    assert not np.array_equal(a, high)


def test_espeak_unknown_voice_is_a_clear_error():
    with pytest.raises(ValueError, match="no voice 'xx-nope'"):
        tts.get_espeak().synth("hi", "xx-nope")


def _linear_resample(x: np.ndarray, rate: int) -> np.ndarray:
    t_out = np.arange(int(len(x) * SR / rate)) / SR
    return np.interp(t_out, np.arange(len(x)) / rate, x)


@pytest.mark.parametrize("engine", ["espeak", "piper"])
def test_output_is_the_native_audio_resampled_to_16k(engine):
    # compared with an independent (linear-interpolation) resampling of the engine's own output
    if engine == "espeak":
        e, args = tts.get_espeak(), ("a sentence to resample", "en+f1", 160, 40)
    else:
        e, args = tts.get_piper(), ("a sentence to resample", 1.0, 0.667, 0.8, 7)
    native, out = e.synth_native(*args), e.synth(*args)
    assert e.native_rate == 22050
    assert abs(len(out) / SR - len(native) / e.native_rate) < 1e-3
    ref = _linear_resample(native, e.native_rate)[: len(out)]
    assert np.corrcoef(ref, out[: len(ref)])[0, 1] > 0.97


def test_piper_speaks_16k_audio_reproducibly_for_a_seed():
    p = tts.get_piper()
    a = p.synth("the children walk to school every morning", length_scale=1.0, seed=1)
    assert a.dtype == np.float32 and 1.5 <= len(a) / SR <= 5.0
    assert np.sqrt(np.mean(a**2)) > 0.01 and _voiced_seconds(a) > 1.0
    p.synth("an utterance in between", seed=2)
    assert np.array_equal(a, p.synth("the children walk to school every morning", seed=1))
    slower = p.synth("the children walk to school every morning", length_scale=1.3, seed=1)
    assert len(slower) > 1.15 * len(a)


def _snr_db(clean, mixed):
    clean = clean.astype(np.float64)
    return 10 * np.log10(np.sum(clean**2) / np.sum((mixed.astype(np.float64) - clean) ** 2))


@pytest.mark.parametrize("kind", ["white", "pink", "babble"])
@pytest.mark.parametrize("snr", [0.0, 7.5, 15.0])
def test_mix_at_snr_hits_the_requested_snr(kind, snr):
    rng = np.random.default_rng(0)
    speech = tts.get_espeak().synth("a short sentence to mix", "en+m2")
    talkers = [tts.get_espeak().synth(text.random_words(rng, 8), v) for v in ("en+m1", "en+f1")]
    nz = noise.make_noise(kind, SR * 3, rng, talkers) * 0.3  # any level: the gain sets it
    mixed = noise.mix_at_snr(speech, nz, snr)
    assert mixed.shape == speech.shape
    assert abs(_snr_db(speech, mixed) - snr) < 1e-3


def test_mix_at_snr_loops_short_noise_and_rejects_silence():
    speech = np.sin(np.arange(SR) * 0.05).astype(np.float32)
    short = np.array([1.0, -1.0, 0.5], np.float32)
    mixed = noise.mix_at_snr(speech, short, 10.0)
    resid = mixed - speech
    assert np.allclose(resid[3:6], resid[:3], atol=1e-6)  # the noise repeats
    assert abs(_snr_db(speech, mixed) - 10.0) < 1e-3
    with pytest.raises(ValueError, match="speech signal is silent"):
        noise.mix_at_snr(np.zeros(10, np.float32), short, 0)
    with pytest.raises(ValueError, match="noise signal is silent"):
        noise.mix_at_snr(speech, np.zeros(10, np.float32), 0)


def test_pink_noise_power_falls_as_one_over_f():
    x = noise.pink_noise(SR * 8, np.random.default_rng(1))
    p = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    band = lambda lo, hi: p[(f >= lo) & (f < hi)].mean()  # noqa: E731
    assert band(100, 200) / band(1600, 3200) == pytest.approx(16.0, rel=0.25)  # 1/f: 16x
    w = np.abs(np.fft.rfft(noise.white_noise(SR * 8, np.random.default_rng(1)))) ** 2
    assert w[(f >= 100) & (f < 200)].mean() / w[(f >= 1600) & (f < 3200)].mean() == pytest.approx(1.0, rel=0.25)
    assert np.sqrt(np.mean(x**2)) == pytest.approx(1.0, rel=1e-5)


def test_render_sets_the_planned_level_and_never_clips():
    spec = ClipSpec(
        "x",
        "test",
        "hello world",
        "en",
        (),
        None,
        "espeak",
        voice="en+m1",
        noise_kind="white",
        snr_db=3.0,
        level_dbfs=-24.0,
        seed=5,
    )
    x = render_audio(spec)
    assert 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2))) == pytest.approx(-24.0, abs=0.01)
    loud = render_audio(
        ClipSpec("y", "test", "", None, (), None, "noise", noise_kind="white", seconds=1.0, level_dbfs=-3.0, seed=5)
    )
    assert np.max(np.abs(loud)) <= 0.95 + 1e-6
    assert np.array_equal(to_pcm16(np.array([1.0, -1.0, 0.5, 1.2])), np.array([32767, -32767, 16384, 32767], np.int16))


def test_plan_is_deterministic_split_by_sentence_and_has_the_promised_mix():
    sizes = DemoSizes()
    specs = plan_clips(0, sizes)
    assert specs == plan_clips(0, sizes) and specs != plan_clips(1, sizes)
    by = {s: [c for c in specs if c.split == s] for s in SPLITS}
    assert [len(by[s]) for s in SPLITS] == [1500, 920, 120, 300]
    check_split_by_sentence({s: {c.text for c in by[s]} for s in SPLITS})
    assert not any(c.text == "" for c in by["sft_train"])
    assert [sum(c.text == "" for c in by[s]) for s in SPLITS[1:]] == [120, 20, 50]
    for s in SPLITS:
        speech = [c for c in by[s] if c.text]
        assert 0.30 <= np.mean([c.noise_kind is not None for c in speech]) <= 0.40
        assert all(sizes.snr_db[0] <= c.snr_db <= sizes.snr_db[1] for c in speech if c.noise_kind)
        assert 0.05 <= np.mean([c.lang == "zh" for c in speech]) <= 0.15
    speech = [c for c in specs if c.text]
    assert len({c.voice for c in speech if c.engine == "espeak" and c.lang == "en"}) == 11
    assert {c.engine for c in speech} == {"espeak", "piper"}
    assert all(c.engine == "espeak" for c in speech if c.lang == "zh")


def test_split_check_catches_a_leaked_sentence():
    with pytest.raises(RuntimeError, match="both sft_train and test"):
        check_split_by_sentence({"sft_train": {"a b c", ""}, "test": {"a b c", ""}})
    check_split_by_sentence({"rl_train": {""}, "test": {""}})  # noise-only clips may repeat


def test_cache_key_depends_on_seed_and_sizes():
    base = cache_key(0, DemoSizes.small())
    assert base == cache_key(0, DemoSizes.small())
    assert base != cache_key(1, DemoSizes.small())
    assert base != cache_key(0, DemoSizes(**{**DemoSizes.small().__dict__, "noisy_share": 0.3}))


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="noisy_share"):
        DemoSizes(noisy_share=1.5)
    with pytest.raises(ValueError, match="test_noise"):
        DemoSizes(test_noise=-1)
    with pytest.raises(ValueError, match="test_context_share"):
        DemoSizes(test_context_share=-0.1)
    with pytest.raises(ValueError, match="unknown demo data size 'tiny'.*full, small, keyword_rich"):
        DemoSizes.preset("tiny")


def test_fields_added_later_keep_the_first_versions_plan_and_cache_key():
    # the key data/demo was built under since version 1: same plan, so no rebuild after an upgrade
    assert cache_key(0, DemoSizes()) == "5f8156489907439eedbd14f6ceab4a48c18a2977b3df41b053edf07f2922dfdf"
    assert cache_key(0, DemoSizes(two_keyword_share=0.2, sft_context_share=None)) == cache_key(0, DemoSizes())
    assert cache_key(0, DemoSizes(sft_context_share=0.5)) != cache_key(0, DemoSizes())
    assert DemoSizes.preset("full") == DemoSizes() and DemoSizes.preset("small") == DemoSizes.small()


def test_split_overrides_apply_to_their_split_only():
    sizes = DemoSizes(keyword_share=0.25, context_share=0.5, sft_context_share=0.1, test_keyword_share=0.8)
    assert sizes.shares("sft_train") == (0.25, 0.1)
    assert sizes.shares("rl_train") == sizes.shares("dev") == (0.25, 0.5)
    assert sizes.shares("test") == (0.8, 0.5)


def test_keyword_rich_plan_puts_300_keywords_with_context_in_test_and_little_context_in_sft():
    specs = plan_clips(0, DemoSizes.keyword_rich())
    test_en = [c for c in specs if c.split == "test" and c.lang == "en"]
    assert len(test_en) == 360  # 400 speech clips, 10 % Mandarin
    assert sum(bool(c.keywords) for c in test_en) == 288  # exactly 80 %
    assert sum(len(c.keywords) for c in test_en if c.context) >= 300
    sft_kw = [c for c in specs if c.split == "sft_train" and c.keywords]
    assert round(sum(bool(c.context) for c in sft_kw) / len(sft_kw), 2) == 0.15
    rl_kw = [c for c in specs if c.split == "rl_train" and c.keywords]  # other splits keep the full set's shares
    assert round(sum(bool(c.context) for c in rl_kw) / len(rl_kw), 2) == 0.5


@pytest.fixture
def small_build(small_demo_data):
    return small_demo_data  # the session's small build (tests/conftest.py), read-only


def _words_in(keyword: str, sentence: str) -> bool:
    k, s = keyword.split(), sentence.split()
    return any(s[i : i + len(k)] == k for i in range(len(s) - len(k) + 1))


@pytest.mark.slow
def test_small_build_manifests_are_consistent(small_build):
    clips = {s: load_manifest(small_build.manifest(s)) for s in SPLITS}
    assert [len(clips[s]) for s in SPLITS] == [60, 40, 20, 20]
    check_split_by_sentence({s: {c.text for c in clips[s]} for s in SPLITS})
    train_texts = {c.text for c in clips["sft_train"]} | {c.text for c in clips["rl_train"]}
    assert not ({c.text for c in clips["test"]} - {""}) & train_texts
    assert all(c.text for c in clips["sft_train"])
    assert all(any(c.text == "" for c in clips[s]) for s in ("rl_train", "dev", "test"))
    for c in (c for s in SPLITS for c in clips[s]):
        assert all(_words_in(k, c.text) for k in c.keywords), c
        if c.context:
            assert c.keywords and set(c.keywords) <= set(c.context.split(", ")), c
        assert (c.lang is None) == (c.text == "")
        info = sf.info(c.audio)
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        assert 0.5 < info.duration < 10.0
    assert any(c.context for s in SPLITS for c in clips[s])
    assert any(c.lang == "zh" for c in clips["sft_train"])


@pytest.mark.slow
def test_small_build_is_deterministic_and_cached(small_build, tmp_path):
    stamp = (small_build.root / "DONE").stat().st_mtime_ns
    again = build_demo_data(small_build.root, seed=0, sizes=DemoSizes.small(), progress=False)
    assert again == small_build and (small_build.root / "DONE").stat().st_mtime_ns == stamp
    other = build_demo_data(tmp_path / "b", seed=0, sizes=DemoSizes.small(), workers=2, progress=False)
    assert_same_build(small_build.root, other.root, clips=140)


def assert_same_build(a: Path, b: Path, clips: int) -> None:
    """Two data folders hold the same files, byte for byte: `clips` wavs, the manifests, DONE, build.json."""
    names = sorted(os.listdir(a / "wav"))
    assert names == sorted(os.listdir(b / "wav")) and len(names) == clips
    match, mismatch, errors = filecmp.cmpfiles(a / "wav", b / "wav", names, shallow=False)
    assert (len(match), mismatch, errors) == (clips, [], [])
    for f in [f"{s}.jsonl" for s in SPLITS] + ["DONE", "build.json"]:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    cmp = filecmp.dircmp(a, b)
    assert not cmp.left_only and not cmp.right_only


@pytest.mark.slow
def test_half_built_or_stale_folder_is_rebuilt_and_foreign_folder_refused(small_build, tmp_path):
    target = tmp_path / "d"
    (target / "wav").mkdir(parents=True)
    (target / "test.jsonl").write_text("half written")  # no DONE: a crashed build
    sizes = DemoSizes(sft_train=3, rl_train=2, rl_noise=1, dev=1, dev_noise=1, test=1, test_noise=1, piper_share=0.0)
    paths = build_demo_data(target, seed=3, sizes=sizes, progress=False)
    assert (paths.root / "DONE").read_text().splitlines()[0] == cache_key(3, sizes)
    assert len(load_manifest(paths.test)) == 2
    assert not list(tmp_path.glob(".d.*"))  # no temp folders left
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        build_demo_data(foreign, seed=3, sizes=sizes, progress=False)
    assert (foreign / "thesis.tex").read_text() == "precious"
    info = json.loads((paths.root / "build.json").read_text())
    assert info["splits"]["test"]["noise_only"] == 1


@pytest.mark.slow
def test_splits_built_later_match_a_build_of_all_splits_at_once(tmp_path):
    sizes = DemoSizes(sft_train=4, rl_train=2, rl_noise=1, dev=1, dev_noise=1, test=1, test_noise=1, piper_share=0.0)
    whole = build_demo_data(tmp_path / "whole", seed=5, sizes=sizes, workers=1, progress=False)
    part = build_demo_data(tmp_path / "part", seed=5, sizes=sizes, progress=False, splits=("rl_train", "test"))
    assert not part.sft_train.exists() and not part.dev.exists() and len(os.listdir(part.root / "wav")) == 5
    assert is_built(part.root, 5, sizes, ("test",)) and not is_built(part.root, 5, sizes)
    kept = os.stat(part.root / "wav" / os.listdir(part.root / "wav")[0]).st_ino
    part = build_demo_data(tmp_path / "part", seed=5, sizes=sizes, progress=False, splits=("sft_train", "dev"))
    assert is_built(part.root, 5, sizes) and kept in {e.stat().st_ino for e in os.scandir(part.root / "wav")}
    assert_same_build(whole.root, part.root, clips=11)
    with pytest.raises(ValueError, match="unknown demo split"):
        build_demo_data(tmp_path / "x", seed=5, sizes=sizes, splits=("train",))


def test_demo_data_folder_is_absolute_so_a_run_resumes_from_any_directory(monkeypatch):
    from funrl.demo.run import demo_data_dir

    monkeypatch.setenv("FUNRL_DEMO_DATA", "data/demo")
    assert demo_data_dir("full").is_absolute() and demo_data_dir("small").name == "demo-small"
