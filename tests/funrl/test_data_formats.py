"""Data adapters (funrl/data_formats.py): a datasets folder, a Lhotse CutSet and a NeMo manifest map onto the same
clips as the equivalent JSONL manifest; bad items are named by line (row); ``python -m funrl.data convert``."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from funrl.config import ConfigError, load_config
from funrl.data import ManifestError, load_manifest, main
from funrl.data_formats import CACHE_DIRNAME, load_clips

REPO = Path(__file__).resolve().parents[2]

# (file, seconds, rate, channels, text, lang, keywords, context)
CLIPS = [
    ("a.wav", 1.0, 16000, 1, "call doctor okafor", "en", ["okafor"], "okafor"),
    ("b.wav", 0.6, 22050, 2, "turn on the lights", "en", [], None),
    ("c.wav", 0.5, 16000, 1, "", None, [], None),  # noise only
]


@pytest.fixture
def data(tmp_path):
    """tmp/data/wav/{a,b,c}.wav (a sine, stereo noise, noise; 16-bit PCM) and the reference ref.jsonl."""
    root = tmp_path / "data"
    (root / "wav").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for name, secs, rate, ch, text, lang, kws, ctx in CLIPS:
        n = int(secs * rate)
        wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate) if name == "a.wav" else 0.1 * rng.standard_normal(n)
        sf.write(root / "wav" / name, np.stack([wave] * ch, axis=1) if ch > 1 else wave, rate, subtype="PCM_16")
        rec = {"audio": f"wav/{name}", "text": text, "lang": lang, "keywords": kws, "context": ctx}
        lines.append(json.dumps({k: v for k, v in rec.items() if v not in (None, [])}))
    (root / "ref.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _same_clips(got, ref):
    """Same text and metadata, same samples (the audio may live in another file)."""
    assert [(c.text, c.lang, c.keywords, c.context) for c in got] == [
        (c.text, c.lang, c.keywords, c.context) for c in ref
    ]
    for g, r in zip(got, ref):
        a, rate_a = sf.read(g.audio, dtype="int16")
        b, rate_b = sf.read(r.audio, dtype="int16")
        assert rate_a == rate_b and np.array_equal(a, b)


def _nemo_lines(root, lines):
    path = root / "nemo.json"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def _nemo_rec(name, secs, rate, ch, text, lang, kws, ctx):
    rec = {"audio_filepath": f"wav/{name}", "text": text, "duration": secs, "speaker": 7}  # extra keys: ignored
    rec.update({k: v for k, v in (("lang", lang), ("keywords", kws), ("context", ctx)) if v not in (None, [])})
    return rec


# ------------------------------------------------------------------------------------------------ NeMo


def test_nemo_manifest_maps_onto_the_same_clips_as_jsonl(data, monkeypatch):
    path = _nemo_lines(data, [_nemo_rec(*c) for c in CLIPS])
    monkeypatch.chdir(data.parent)  # relative paths resolve against the manifest's folder
    clips = load_clips(path, "nemo")
    ref = load_manifest(data / "ref.jsonl")
    assert [c.audio for c in clips] == [c.audio for c in ref]  # whole files: used in place
    assert [(c.line, c.source) for c in clips] == [(1, str(path)), (2, str(path)), (3, str(path))]
    _same_clips(clips, ref)
    assert not (data / CACHE_DIRNAME).exists()


def test_nemo_offset_becomes_a_cached_excerpt_written_once(data, tmp_path):
    rec = dict(_nemo_rec(*CLIPS[0]), offset=0.25, duration=0.5)
    path = _nemo_lines(data, [rec])
    cache = tmp_path / "cache"
    (clip,) = load_clips(path, "nemo", audio_cache_dir=cache)
    assert Path(clip.audio).parent == cache
    got, rate = sf.read(clip.audio, dtype="int16")
    whole, _ = sf.read(data / "wav" / "a.wav", dtype="int16")
    assert rate == 16000 and np.array_equal(got, whole[4000:12000])
    assert sf.info(clip.audio).subtype == "PCM_16"
    stamp = os.stat(clip.audio).st_mtime_ns
    (again,) = load_clips(path, "nemo", audio_cache_dir=cache)
    assert again.audio == clip.audio and os.stat(clip.audio).st_mtime_ns == stamp
    assert len(list(cache.iterdir())) == 1
    # a duration shorter than the file (by more than 10 ms) is an excerpt from 0 too
    (short,) = load_clips(_nemo_lines(data, [dict(rec, offset=0, duration=0.5)]), "nemo", audio_cache_dir=cache)
    assert np.array_equal(sf.read(short.audio, dtype="int16")[0], whole[:8000])


def test_nemo_bad_lines_are_reported_by_line_number(data):
    good = _nemo_rec(*CLIPS[0])
    path = _nemo_lines(
        data,
        [
            good,  # 1 fine
            '{"audio_filepath": "wav/a.wav"',  # 2 malformed
            {k: v for k, v in good.items() if k != "text"},  # 3 text missing
            dict(good, duration=-1),  # 4 bad duration
            {k: v for k, v in good.items() if k != "duration"},  # 5 duration missing
            dict(good, audio_filepath="wav/none.wav"),  # 6 file missing
            {**{k: v for k, v in good.items() if k != "keywords"}, "keyword": ["x"]},  # 7 misspelt key
            dict(good, offset=0.8, duration=0.5),  # 8 past the end of the file
            dict(good, lang=""),  # 9 empty lang (the JSONL check)
            {k: v for k, v in good.items() if k != "audio_filepath"},  # 10 no audio
        ],
    )
    with pytest.raises(ManifestError) as info:
        load_clips(path, "nemo")
    got = [e.split(": ")[0].rsplit(":", 1)[1] + " " + e.split(": ")[1] for e in info.value.errors]
    assert got == [
        "2 json",
        "3 text",
        "4 duration",
        "5 duration",
        "6 audio_filepath",
        "7 keyword",
        "8 duration",
        "9 lang",
        "10 audio_filepath",
    ]
    msg = str(info.value)
    assert f"{path}:4: duration: must be > 0 seconds, got -1" in msg
    assert 'did you mean "keywords"' in msg and "runs past the end" in msg
    assert f"file not found: {data / 'wav' / 'none.wav'}" in msg


# ------------------------------------------------------------------------------------------------ datasets


def _wav_bytes(path):
    return Path(path).read_bytes()


def _save_dataset(folder, audio, **columns):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"audio": audio, **columns})
    if audio and isinstance(audio[0], dict):
        ds = ds.cast_column("audio", datasets.Audio())
    ds.save_to_disk(str(folder))
    return folder


def _columns():
    return {
        "text": [c[4] for c in CLIPS],
        "lang": [c[5] for c in CLIPS],
        "keywords": [c[6] for c in CLIPS],
        "context": [c[7] for c in CLIPS],
        "speaker": [1, 2, 3],
    }


def test_hf_datasets_folder_with_embedded_audio_maps_onto_the_same_clips(data):
    audio = [{"bytes": _wav_bytes(data / "wav" / c[0]), "path": None} for c in CLIPS]
    folder = _save_dataset(data / "hf", audio, **_columns())
    clips = load_clips(folder, "hf_datasets")
    assert all(Path(c.audio).parent == folder / CACHE_DIRNAME for c in clips)
    assert [(c.line, c.source) for c in clips] == [(1, str(folder)), (2, str(folder)), (3, str(folder))]
    _same_clips(clips, load_manifest(data / "ref.jsonl"))
    assert sf.info(clips[1].audio).channels == 2 and sf.info(clips[1].audio).samplerate == 22050
    stamps = [os.stat(c.audio).st_mtime_ns for c in clips]
    assert [c.audio for c in load_clips(folder, "hf_datasets")] == [c.audio for c in clips]
    assert [os.stat(c.audio).st_mtime_ns for c in clips] == stamps  # reused, not rewritten


def test_hf_datasets_path_column_resolves_against_the_folder(data):
    folder = data / "hf_paths"
    _save_dataset(folder, [f"../wav/{c[0]}" for c in CLIPS], **_columns())  # plain strings: not embedded
    clips = load_clips(folder, "hf_datasets")
    ref = load_manifest(data / "ref.jsonl")
    assert [c.audio for c in clips] == [c.audio for c in ref]
    _same_clips(clips, ref)


def test_hf_datasets_bad_rows_are_reported_by_row(data):
    ok = {"bytes": _wav_bytes(data / "wav" / "a.wav"), "path": None}
    audio = [ok, ok, ok, {"bytes": b"not audio at all", "path": None}]
    folder = _save_dataset(data / "hf_bad", audio, text=["fine", None, "x", "y"], keywords=[["a"], [], ["ok", ""], []])
    with pytest.raises(ManifestError) as info:
        load_clips(folder, "hf_datasets")
    assert info.value.errors == [
        f"{folder}[row 1]: text: expected a string, got null",
        f"{folder}[row 2]: keywords: expected a list of non-empty strings; bad item(s) at index [1]",
        f"{folder}[row 3]: audio: embedded audio does not decode ({info.value.errors[2].split('(', 1)[1]}",
    ]
    paths = _save_dataset(data / "hf_gone", ["../wav/a.wav", "gone.wav"], text=["a", "b"])
    with pytest.raises(ManifestError) as info:
        load_clips(paths, "hf_datasets")
    assert info.value.errors == [f"{paths}[row 1]: audio: file not found: {paths / 'gone.wav'}"]


def test_audio_check_names_a_datasets_clip_by_its_row(data):
    from funrl.audio_check import check_clips

    buf = io.BytesIO()
    sf.write(buf, np.zeros(160), 16000, format="WAV", subtype="PCM_16")  # 10 ms: under the minimum
    ok = {"bytes": _wav_bytes(data / "wav" / "a.wav"), "path": None}
    folder = _save_dataset(data / "hf_short", [ok, {"bytes": buf.getvalue(), "path": None}], text=["a", "b"])
    clips = load_clips(folder, "hf_datasets")
    with pytest.raises(ManifestError) as info:
        check_clips(clips, 0.05, 30.0, progress=False)
    assert info.value.errors[0].startswith(f"{folder}[row 1]: audio: {clips[1].audio} is 0.010 s long")


def test_hf_datasets_folder_problems_name_the_fix(data):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"audio": ["wav/a.wav"], "sentence": ["hi"]})
    ds.save_to_disk(str(data / "no_text"))
    with pytest.raises(ManifestError, match=r"no 'text' column \(it has audio, sentence\); rename one"):
        load_clips(data / "no_text", "hf_datasets")
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(data / "splits"))
    with pytest.raises(ManifestError, match=r"holds the splits train, test; give one split's folder"):
        load_clips(data / "splits", "hf_datasets")
    with pytest.raises(ManifestError, match="not a datasets folder"):
        load_clips(data / "wav", "hf_datasets")
    with pytest.raises(ManifestError, match="not a folder"):
        load_clips(data / "ref.jsonl", "hf_datasets")


def test_missing_extra_names_the_install_command(data, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    (data / "hf").mkdir()
    with pytest.raises(ImportError, match=r"pip install 'funrl\[data\]'"):
        load_clips(data / "hf", "hf_datasets")


# ------------------------------------------------------------------------------------------------ Lhotse


def _cut(path, text, lang=None, keywords=None, context=None, **kw):
    from lhotse import MonoCut, Recording, SupervisionSegment

    rec = Recording.from_file(str(path))
    sup = SupervisionSegment(
        id=f"{rec.id}-s",
        recording_id=rec.id,
        start=0,
        duration=rec.duration,
        text=text,
        language=lang,
        custom={"keywords": keywords} if keywords else None,
    )
    return MonoCut(
        id=rec.id,
        start=0,
        duration=rec.duration,
        channel=rec.channel_ids if rec.num_channels > 1 else 0,
        recording=rec,
        supervisions=[sup],
        custom={"context": context} if context else None,
        **kw,
    )


def _lhotse_file(path, cuts):
    lines = [c if isinstance(c, str) else json.dumps(c.to_dict()) for c in cuts]
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def test_lhotse_cutset_maps_onto_the_same_clips(data):
    from lhotse import CutSet

    names = {"en": "English"}
    cuts = CutSet.from_cuts([_cut(data / "wav" / c[0], c[4], names.get(c[5]), c[6], c[7]) for c in CLIPS])
    path = data / "cuts.jsonl.gz"
    cuts.to_file(str(path))  # lhotse's own writer
    clips = load_clips(path, "lhotse")
    ref = load_manifest(data / "ref.jsonl")
    assert [c.audio for c in clips] == [c.audio for c in ref]
    assert [c.line for c in clips] == [1, 2, 3]
    _same_clips(clips, ref)  # "English" became "en"


def test_lhotse_cut_of_part_of_a_recording_is_a_cached_excerpt(data):
    from lhotse import SupervisionSegment

    stereo = _cut(data / "wav" / "b.wav", "x")
    sup = SupervisionSegment(id="s", recording_id=stereo.recording_id, start=0, duration=0.3, text="lights")
    part = dataclasses.replace(stereo, id="p", start=0.1, duration=0.3, supervisions=[sup])
    right = dataclasses.replace(part, id="r", channel=1)
    clips = load_clips(_lhotse_file(data / "part.jsonl.gz", [part, right]), "lhotse")
    whole, rate = sf.read(data / "wav" / "b.wav", dtype="int16")
    start, n = round(0.1 * rate), round(0.3 * rate)
    assert np.array_equal(sf.read(clips[0].audio, dtype="int16", always_2d=True)[0], whole[start : start + n])
    assert np.array_equal(sf.read(clips[1].audio, dtype="int16", always_2d=True)[0], whole[start : start + n, 1:2])
    assert [c.text for c in clips] == ["lights", "lights"]
    assert all(Path(c.audio).parent == data / CACHE_DIRNAME for c in clips)


def test_lhotse_bad_lines_are_reported_by_line_number(data):
    good = _cut(data / "wav" / "a.wav", "hi")
    no_sup = dataclasses.replace(good, supervisions=[])
    overhang = good.truncate(offset=0.5, duration=0.3, keep_excessive_supervisions=True)
    missing = json.loads(json.dumps(good.to_dict()).replace("a.wav", "none.wav"))
    path = _lhotse_file(
        data / "bad.jsonl.gz",
        [
            good,  # 1 fine
            no_sup,  # 2 no supervision
            overhang,  # 3 supervision outside the cut
            good.perturb_speed(1.1),  # 4 a transform
            good.pad(duration=2.0),  # 5 a MixedCut
            json.dumps(missing),  # 6 audio file missing
            "{not json",  # 7 malformed
            json.dumps({"type": "MonoCut", "id": "x"}),  # 8 lhotse cannot read it
            json.dumps(good.recording.to_dict()),  # 9 a recording, not a cut
        ],
    )
    with pytest.raises(ManifestError) as info:
        load_clips(path, "lhotse")
    got = [e.split(": ")[0].rsplit(":", 1)[1] + " " + e.split(": ")[1] for e in info.value.errors]
    assert got == [
        "2 supervisions",
        "3 supervisions",
        "4 recording",
        "5 type",
        "6 recording",
        "7 json",
        "8 cut",
        "9 type",
    ]
    msg = str(info.value)
    assert "outside the cut's 0-0.3 s" in msg and "has transforms" in msg and "MixedCut is not supported" in msg
    assert f"file not found: {data / 'wav' / 'none.wav'}" in msg
    assert "a Recording, not a cut: give a CutSet manifest" in msg


# ------------------------------------------------------------------------------------------------ config, CLI


@pytest.mark.slow  # imports funrl.train (Ray, vLLM)
def test_data_format_config_key_is_validated_and_used_by_training(data):
    with pytest.raises(ConfigError, match="data.format must be one of jsonl, hf_datasets, lhotse, nemo"):
        load_config(None, ["data.format=csv"])
    from funrl.inputs import checked_manifest

    path = _nemo_lines(data, [_nemo_rec(*c) for c in CLIPS])
    cfg = load_config(None, ["data.format=nemo", f"data.train_manifest={path}"])
    _same_clips(checked_manifest(cfg, str(path)), load_manifest(data / "ref.jsonl"))
    with pytest.raises(ManifestError, match="json: malformed JSON"):  # as JSONL, a NeMo file is not a manifest
        checked_manifest(
            load_config(None, [f"data.train_manifest={path}", "data.format=jsonl"]), str(_nemo_lines(data, ["{oops"]))
        )


def _convert(*args):
    return subprocess.run(
        [sys.executable, "-m", "funrl.data", "convert", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # two `python -m funrl.data` processes (torch is imported)
def test_convert_cli_round_trips_each_format_to_a_jsonl_manifest(data):
    nemo = _nemo_lines(data, [_nemo_rec(*c) for c in CLIPS])
    run = _convert(nemo, "--format", "nemo", "--out", data / "from_nemo.jsonl")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"wrote 3 clips to {data / 'from_nemo.jsonl'}"
    out = str(data / "from_nemo.jsonl")
    assert load_manifest(out) == [dataclasses.replace(c, source=out) for c in load_manifest(data / "ref.jsonl")]
    assert json.loads((data / "from_nemo.jsonl").read_text().splitlines()[0])["audio"] == "wav/a.wav"
    audio = [{"bytes": _wav_bytes(data / "wav" / c[0]), "path": None} for c in CLIPS]
    folder = _save_dataset(data / "hf", audio, **_columns())
    run = _convert(folder, "--format", "hf_datasets", "--out", data / "from_hf.jsonl", "--audio-dir", data / "hfwav")
    assert run.returncode == 0, run.stderr
    clips = load_manifest(data / "from_hf.jsonl")
    assert all(Path(c.audio).parent == data / "hfwav" for c in clips)
    _same_clips(clips, load_manifest(data / "ref.jsonl"))


def test_convert_cli_bad_input_exits_2_with_the_reason(data, capsys):
    bad = _nemo_lines(data, [{"audio_filepath": "wav/a.wav", "text": "x"}])
    assert main(["convert", str(bad), "--format", "nemo", "--out", str(data / "o.jsonl")]) == 2
    assert f"{bad}:1: duration: missing" in capsys.readouterr().err
    assert not (data / "o.jsonl").exists()
    assert main(["convert", str(bad), "--format", "nemo", "--out", str(data)]) == 2
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(bad), "--format", "csv", "--out", str(data / "o.jsonl")])
    assert exit_info.value.code == 2 and "invalid choice: 'csv'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--help"])
    assert exit_info.value.code == 0 and "--format {jsonl,hf_datasets,lhotse,nemo}" in capsys.readouterr().out


def test_sft_reads_its_given_manifests_in_data_format(data, tmp_path):
    from funrl.sft_config import load_sft_config
    from funrl.sft_data import load_data
    from policy.models.audio import load_audio

    with pytest.raises(ConfigError, match="data.format must be one of jsonl, hf_datasets, lhotse, nemo"):
        load_sft_config(None, ["data.format=csv", "data.train_manifest=x"])
    train = _nemo_lines(data, [_nemo_rec(*c) for c in CLIPS])
    cfg = load_sft_config(None, ["data.format=nemo", f"data.train_manifest={train}", "data.noise_clips=true"])
    loaded = load_data(cfg, tmp_path)
    ref = load_manifest(data / "ref.jsonl")
    _same_clips(loaded.clips, ref)
    assert all(np.array_equal(w, load_audio(c.audio, 30.0)) for w, c in zip(loaded.waves, ref))
