"""Manifest loader/writer and the deterministic clip sampler (funrl/data.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from funrl.data import (
    ClipSampler,
    EmptyPoolError,
    ManifestError,
    MixedSampler,
    load_manifest,
    make_sampler,
    quotas,
    write_manifest,
)
from policy.messages import Clip


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF")
    return path


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_relative_audio_paths_resolve_against_manifest_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _touch(data / "wav" / "a.wav")
    _touch(tmp_path / "elsewhere" / "b.wav")
    abs_b = str(tmp_path / "elsewhere" / "b.wav")
    man = _write_lines(
        data / "m.jsonl",
        [
            json.dumps(
                {"audio": "wav/a.wav", "text": "hello", "lang": "en", "keywords": ["hello"], "context": "hello"}
            ),
            "",
            json.dumps({"audio": abs_b, "text": ""}),
            json.dumps({"audio": "../elsewhere/b.wav", "text": "x"}),
        ],
    )
    monkeypatch.chdir(tmp_path / "elsewhere")  # the working directory must not matter
    clips = load_manifest(man)
    assert [c.audio for c in clips] == [str(data / "wav" / "a.wav"), abs_b, abs_b]
    assert [c.line for c in clips] == [1, 3, 4]  # the blank line 2 is skipped, not renumbered
    assert clips[0] == Clip(
        audio=str(data / "wav" / "a.wav"),
        text="hello",
        lang="en",
        keywords=("hello",),
        context="hello",
        line=1,
        source=str(man),
    )
    assert clips[1].lang is None and clips[1].keywords == () and clips[1].context is None
    assert clips[1].meta() == {"lang": None, "keywords": []}


def test_every_bad_line_is_reported_with_its_line_number_and_field(tmp_path):
    _touch(tmp_path / "ok.wav")
    lines = [
        json.dumps({"audio": "ok.wav", "text": "fine"}),  # 1 ok
        '{"audio": "ok.wav", "text": "oops"',  # 2 malformed
        json.dumps(["audio", "text"]),  # 3 not an object
        json.dumps({"text": "no audio"}),  # 4 audio missing
        json.dumps({"audio": 5, "text": "x"}),  # 5 audio not str
        json.dumps({"audio": "ok.wav"}),  # 6 text missing
        json.dumps({"audio": "ok.wav", "text": "x", "lang": 3}),  # 7 lang
        json.dumps({"audio": "ok.wav", "text": "x", "keywords": "a,b"}),  # 8 keywords not list
        json.dumps({"audio": "ok.wav", "text": "x", "keywords": ["a", 2]}),  # 9 keyword not str
        json.dumps({"audio": "ok.wav", "text": "x", "context": ["c"]}),  # 10 context
        json.dumps({"audio": "ok.wav", "text": "x", "keyword": ["a"]}),  # 11 unknown key
        json.dumps({"audio": "missing.wav", "text": "x"}),  # 12 file missing
        "   ",  # 13 blank: skipped
        json.dumps({"audio": "ok.wav", "txt": "x"}),  # 14 two problems
    ]
    man = _write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ManifestError) as info:
        load_manifest(man)
    err = info.value
    assert isinstance(err, ValueError)
    got = [(e.split(": ")[0].rsplit(":", 1)[1], e.split(": ")[1]) for e in err.errors]
    assert got == [
        ("2", "json"),
        ("3", "line"),
        ("4", "audio"),
        ("5", "audio"),
        ("6", "text"),
        ("7", "lang"),
        ("8", "keywords"),
        ("9", "keywords"),
        ("10", "context"),
        ("11", "keyword"),
        ("12", "audio"),
        ("14", "text"),
        ("14", "txt"),
    ]
    assert all(e.startswith(f"{man}:") for e in err.errors)
    msg = str(err)
    assert 'did you mean "keywords"' in msg and 'did you mean "text"' in msg
    assert f"file not found: {tmp_path / 'missing.wav'}" in msg
    assert "index [1]" in msg  # the non-string keyword's position
    assert msg.count("\n") == len(err.errors)  # one header + one line per problem


def test_check_audio_false_skips_only_the_file_check(tmp_path):
    man = _write_lines(tmp_path / "m.jsonl", [json.dumps({"audio": "nope.wav", "text": "a"})])
    assert load_manifest(man, check_audio=False)[0].audio == str(tmp_path / "nope.wav")
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(man)


def test_audio_path_that_is_a_folder_is_rejected(tmp_path):
    (tmp_path / "d.wav").mkdir()
    man = _write_lines(tmp_path / "m.jsonl", [json.dumps({"audio": "d.wav", "text": "a"})])
    with pytest.raises(ManifestError, match=r"m.jsonl:1: audio: is not a file"):
        load_manifest(man)


def test_missing_or_empty_manifest_is_an_error(tmp_path):
    with pytest.raises(ManifestError, match="manifest file not found"):
        load_manifest(tmp_path / "none.jsonl")
    with pytest.raises(ManifestError, match="no clips"):
        load_manifest(_write_lines(tmp_path / "empty.jsonl", ["", "  "]))


def test_invalid_utf8_line_is_reported(tmp_path):
    _touch(tmp_path / "a.wav")
    man = tmp_path / "m.jsonl"
    man.write_bytes(b'{"audio": "a.wav", "text": "ok"}\n{"audio": "a.wav", "text": "\xff"}\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2: line: not valid UTF-8"):
        load_manifest(man)


def test_write_then_load_round_trips_and_writes_relative_paths(tmp_path):
    _touch(tmp_path / "wav" / "a.wav")
    _touch(tmp_path / "wav" / "b.wav")
    clips = [
        Clip(
            audio=str(tmp_path / "wav" / "a.wav"),
            text="我爱 beijing",
            lang="zh",
            keywords=("beijing",),
            context="beijing",
        ),
        Clip(audio=str(tmp_path / "wav" / "b.wav"), text=""),
    ]
    out = write_manifest(clips, tmp_path / "m.jsonl")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == (
        '{"audio": "wav/a.wav", "text": "我爱 beijing", "lang": "zh", "keywords": ["beijing"], "context": "beijing"}'
    )
    assert lines[1] == '{"audio": "wav/b.wav", "text": ""}'
    back = load_manifest(out)
    assert [(c.audio, c.text, c.lang, c.keywords, c.context) for c in back] == [
        (c.audio, c.text, c.lang, c.keywords, c.context) for c in clips
    ]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_write_manifest_rejects_bad_dicts_and_keeps_old_file(tmp_path):
    target = _write_lines(tmp_path / "m.jsonl", ["old"])
    with pytest.raises(ManifestError) as info:
        write_manifest([{"audio": "a.wav", "text": "x"}, {"audio": "a.wav", "txet": "x"}, 7], target)
    assert info.value.errors == [
        'item 1: text: missing (every line needs "text")',
        'item 1: txet: unknown key; did you mean "text"?',
        "item 2: item: expected a Clip or a dict, got int",
    ]
    assert target.read_text() == "old\n"


def _clips(n):
    return [Clip(audio=f"/x/{i}.wav", text=str(i)) for i in range(n)]


def _texts(batch):
    return [c.text for c in batch]


def test_sampler_visits_each_clip_once_per_epoch_in_seeded_order():
    clips = _clips(10)
    s = ClipSampler(clips, clips_per_step=4, seed=3)
    seen = [t for _ in range(5) for t in _texts(s.next_batch())]  # 20 clips = 2 epochs
    perm0 = np.random.default_rng([3, 0]).permutation(10)
    perm1 = np.random.default_rng([3, 1]).permutation(10)
    assert seen == [str(i) for i in perm0] + [str(i) for i in perm1]
    assert sorted(seen[:10], key=int) == [str(i) for i in range(10)]
    assert seen[:10] != seen[10:]  # reshuffled each epoch
    assert s.state_dict() == {"epoch": 2, "index": 0, "num_clips": 10, "seed": 3}


def test_sampler_is_deterministic_for_a_seed_and_differs_across_seeds():
    a = [_texts(ClipSampler(_clips(50), 7, seed=1).next_batch())]
    b = [_texts(ClipSampler(_clips(50), 7, seed=1).next_batch())]
    c = [_texts(ClipSampler(_clips(50), 7, seed=2).next_batch())]
    assert a == b and a != c


def test_sampler_without_shuffle_keeps_file_order_and_wraps():
    s = ClipSampler(_clips(5), clips_per_step=3, seed=0, shuffle=False)
    assert [_texts(s.next_batch()) for _ in range(3)] == [["0", "1", "2"], ["3", "4", "0"], ["1", "2", "3"]]


def test_batch_larger_than_the_data_spans_epochs():
    s = ClipSampler(_clips(3), clips_per_step=7, seed=5)
    batch = _texts(s.next_batch())
    expect = [str(i) for e in range(3) for i in np.random.default_rng([5, e]).permutation(3)][:7]
    assert batch == expect and s.state_dict()["epoch"] == 2 and s.state_dict()["index"] == 1


def test_resume_mid_epoch_gives_identical_next_batches():
    clips = _clips(23)
    ref = ClipSampler(clips, clips_per_step=5, seed=11)
    for _ in range(7):  # 35 clips: mid epoch 1
        ref.next_batch()
    state = json.loads(json.dumps(ref.state_dict()))  # survives JSON
    assert state["epoch"] == 1 and state["index"] == 12
    resumed = ClipSampler(clips, clips_per_step=5, seed=11)
    resumed.load_state_dict(state)
    for _ in range(10):  # across the next epoch end
        assert _texts(resumed.next_batch()) == _texts(ref.next_batch())


def test_sampler_refuses_state_of_other_data_or_bad_values():
    s = ClipSampler(_clips(10), 2, seed=0)
    with pytest.raises(ValueError, match="num_clips=12"):
        s.load_state_dict({"epoch": 0, "index": 0, "num_clips": 12, "seed": 0})
    with pytest.raises(ValueError, match="seed=4"):
        s.load_state_dict({"epoch": 0, "index": 0, "num_clips": 10, "seed": 4})
    with pytest.raises(ValueError, match="out of range"):
        s.load_state_dict({"epoch": 0, "index": 10})
    with pytest.raises(ValueError, match="lacks"):
        s.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="clips_per_step"):
        ClipSampler(_clips(3), 0, seed=0)
    with pytest.raises(ValueError, match="no clips"):
        ClipSampler([], 1, seed=0)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        ClipSampler(_clips(3), 1, seed=-1)


def _mixed_clips(n_speech=10, n_noise=3):
    return [Clip(audio=f"/s{i}.wav", text=f"word {i}") for i in range(n_speech)] + [
        Clip(audio=f"/n{i}.wav", text="") for i in range(n_noise)
    ]


def test_mixed_sampler_puts_exactly_k_noise_clips_in_every_batch_and_visits_each_pool_per_epoch():
    sampler = MixedSampler(_mixed_clips(), 5, {"noise": 2}, seed=3)
    batches = [sampler.next_batch() for _ in range(6)]  # 6 x 3 speech = 18 (1.8 epochs), 6 x 2 noise = 12 (4 epochs)
    assert all(sum(c.text == "" for c in b) == 2 and len(b) == 5 for b in batches)
    speech = [c.audio for b in batches for c in b if c.text]
    noise = [c.audio for b in batches for c in b if not c.text]
    assert sorted(speech[:10]) == sorted(f"/s{i}.wav" for i in range(10))  # first speech epoch: each once
    assert sorted(noise[:3]) == sorted(f"/n{i}.wav" for i in range(3))
    # each pool follows a plain ClipSampler of its own clips with the same seed
    expected = ClipSampler(_mixed_clips()[:10], 3, seed=3)
    assert speech[:6] == [c.audio for c in expected.next_batch() + expected.next_batch()]


def test_mixed_sampler_resumes_identically_and_refuses_a_plain_state():
    a = MixedSampler(_mixed_clips(), 5, {"noise": 2}, seed=0)
    for _ in range(4):
        a.next_batch()
    b = MixedSampler(_mixed_clips(), 5, {"noise": 2}, seed=0)
    b.load_state_dict(a.state_dict())
    assert [c.audio for c in a.next_batch()] == [c.audio for c in b.next_batch()]
    with pytest.raises(ValueError, match="noise_per_step"):
        b.load_state_dict(ClipSampler(_mixed_clips(), 5, seed=0).state_dict())


def test_make_sampler_needs_noise_clips_when_asked_for_them():
    assert isinstance(make_sampler(_mixed_clips(), 5, {}, seed=0), ClipSampler)
    with pytest.raises(ValueError, match="no noise-only clip"):
        make_sampler(_mixed_clips(n_noise=0), 5, {"noise": 2}, seed=0)


def _lang_clips(n_en=12, n_zh=3, n_noise=2):
    return (
        [Clip(audio=f"/e{i}.wav", text=f"word {i}", lang="en") for i in range(n_en)]
        + [Clip(audio=f"/z{i}.wav", text=f"字{i}", lang="zh") for i in range(n_zh)]
        + [Clip(audio=f"/n{i}.wav", text="") for i in range(n_noise)]
    )


def test_lang_per_step_puts_exactly_k_clips_of_that_language_in_every_batch():
    sampler = make_sampler(_lang_clips(), 6, quotas(1, {"zh": 2}), seed=2)
    batches = [sampler.next_batch() for _ in range(6)]  # 6 x 2 zh = 12 draws of 3 clips: 4 epochs of that pool
    assert all(len(b) == 6 for b in batches)
    assert all(sum(c.lang == "zh" for c in b) == 2 and sum(not c.text for c in b) == 1 for b in batches)
    zh = [c.audio for b in batches for c in b if c.lang == "zh"]
    assert sorted(zh[:3]) == ["/z0.wav", "/z1.wav", "/z2.wav"]  # the pool's first epoch: each clip once
    expected = ClipSampler(_lang_clips()[12:15], 2, seed=2)  # the pool follows a plain sampler of its clips
    assert zh[:4] == [c.audio for c in expected.next_batch() + expected.next_batch()]
    en = [c.audio for b in batches for c in b if c.lang == "en"]
    assert sorted(en[:12]) == sorted(f"/e{i}.wav" for i in range(12))  # the rest: English clips only


def test_lang_per_step_without_noise_quota_leaves_noise_clips_in_the_rest():
    sampler = make_sampler(_lang_clips(), 5, quotas(0, {"zh": 1}), seed=0)
    assert isinstance(sampler, MixedSampler) and sorted(sampler.state_dict()) == ["lang:zh", "speech"]
    rest = [c for _ in range(14) for c in sampler.next_batch() if c.lang != "zh"]  # 14 x 4 = 56 >= 4 epochs of 14
    assert {c.audio for c in rest[:14]} == {f"/e{i}.wav" for i in range(12)} | {"/n0.wav", "/n1.wav"}


def test_lang_per_step_resumes_identically_and_refuses_a_state_without_its_pool():
    a = make_sampler(_lang_clips(), 6, quotas(1, {"zh": 2}), seed=0)
    for _ in range(5):
        a.next_batch()
    b = make_sampler(_lang_clips(), 6, quotas(1, {"zh": 2}), seed=0)
    b.load_state_dict(a.state_dict())
    assert [c.audio for c in a.next_batch()] == [c.audio for c in b.next_batch()]
    with pytest.raises(ValueError, match="lang_per_step"):
        b.load_state_dict(make_sampler(_lang_clips(), 6, quotas(1), seed=0).state_dict())


def test_lang_per_step_names_a_language_the_manifest_lacks_and_a_quota_that_fills_the_batch():
    with pytest.raises(ValueError, match="'fr' clips .* no speech clip"):
        make_sampler(_lang_clips(), 6, quotas(1, {"fr": 1}), seed=0)
    with pytest.raises(ValueError, match="summing to less than clips_per_step"):
        make_sampler(_lang_clips(), 3, quotas(1, {"zh": 2}), seed=0)


def test_context_per_step_puts_exactly_k_clips_with_prompt_context_in_every_batch():
    clips = _lang_clips() + [Clip(audio=f"/c{i}.wav", text=f"kw {i}", lang="en", context="kw") for i in range(4)]
    sampler = make_sampler(clips, 7, quotas(1, {"zh": 1}, 3), seed=1)
    batches = [sampler.next_batch() for _ in range(4)]
    assert all(sum(c.context is not None for c in b) == 3 and sum(c.lang == "zh" for c in b) == 1 for b in batches)
    context = [c.audio for b in batches for c in b if c.context]
    assert sorted(context[:4]) == [f"/c{i}.wav" for i in range(4)]
    with pytest.raises(ValueError, match="data.context_per_step > 0 but .* no speech clip with a context"):
        make_sampler(_lang_clips(), 6, quotas(1, None, 2), seed=0)


def test_an_empty_pool_names_the_config_key_of_the_quota_that_asked_for_it():
    speech_only = [Clip(audio="/e.wav", text="word", lang="en")]
    for pools, key in ((quotas(1), "noise"), (quotas(0, None, 1), "context"), (quotas(0, {"zh": 1}), "lang")):
        with pytest.raises(EmptyPoolError) as info:
            make_sampler(speech_only, 4, pools, seed=0)
        assert info.value.key == f"data.{key}_per_step"
