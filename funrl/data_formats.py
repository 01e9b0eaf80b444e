"""Data adapters beside the JSONL manifest: a Hugging Face ``datasets`` folder, a Lhotse CutSet, a NeMo manifest.

    clips = load_clips("data/train", "hf_datasets")        # or "jsonl" (the reference format), "lhotse", "nemo"

Every adapter maps its format onto the same `Clip` records as `funrl.data.load_manifest` and checks each
item with the same record check, all items before anything is returned: one `ManifestError` lists every
bad one as ``FILE:LINE: field: reason`` (a datasets folder: ``FOLDER[row N]: field: reason``, N counted from
0 as in ``ds[N]``). Audio that is not a whole file on disk -- audio embedded in a datasets folder, a cut or
NeMo line that covers part of a longer file -- is written once as a wav file into a cache folder
(`AudioCache`; by default ``.funrl_audio`` beside the data), named by a hash of what it holds, so a second
load reuses it. Nothing is downloaded: ``datasets`` and ``lhotse`` (``pip install funrl[data]``) only read
local files. docs/data.md describes each format's fields.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from funrl.data import ManifestError, _check_record, _clip_from_record, _resolve_audio, load_manifest, parse_json_line
from policy.files import created_mode
from policy.messages import Clip

FORMATS = ("jsonl", "hf_datasets", "lhotse", "nemo")
CACHE_DIRNAME = ".funrl_audio"
META_KEYS = ("lang", "keywords", "context")
TOLERANCE_S = 0.01  # a duration or offset within 10 ms of the file's is taken as the whole file

Problems = list[tuple[str, str]]


class CacheError(OSError):
    """The audio cache folder cannot be written."""


def load_clips(
    path: str | os.PathLike, fmt: str = "jsonl", audio_cache_dir: str | os.PathLike | None = None
) -> list[Clip]:
    """The clips of a manifest (or datasets folder) in format ``fmt`` (one of `FORMATS`), every item checked.

    ``audio_cache_dir``: where audio that is not a whole file on disk is written (default: ``.funrl_audio``
    beside the data). Raises `ManifestError` listing every bad item, `ValueError` for an unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "jsonl":
        return load_manifest(path)
    path = Path(path)
    source = str(path.absolute())
    if fmt == "hf_datasets" and not path.is_dir():
        raise ManifestError(
            source, [f"{path}: not a folder (hf_datasets reads a folder written by Dataset.save_to_disk)"]
        )
    if fmt != "hf_datasets" and not path.is_file():
        raise ManifestError(source, [f"{path}: manifest file not found"])
    base = path.absolute() if fmt == "hf_datasets" else path.absolute().parent
    cache = AudioCache(Path(audio_cache_dir) if audio_cache_dir else base / CACHE_DIRNAME)
    out = _Collector(source)
    read = {"hf_datasets": _read_hf_datasets, "lhotse": _read_lhotse, "nemo": _read_nemo}[fmt]
    try:
        read(path, base, cache, out)
    except CacheError as exc:
        raise ManifestError(
            source,
            [
                f"{cache.folder}: cannot write the audio cache ({exc}); give a writable "
                "folder with data.audio_cache_dir (or --audio-dir)"
            ],
        ) from None
    return out.result(path)


class _Collector:
    """Clips and problems of one source: each item's own problems plus the JSONL record check."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.clips: list[Clip] = []
        self.errors: list[str] = []

    def add(self, where: str, line: int, rec: dict | None, problems: Problems) -> None:
        """``rec`` has the JSONL keys; its "audio" is a resolved path (a placeholder when ``problems`` say why
        there is none)."""
        problems = list(problems) + (_check_record(rec) if rec is not None else [])
        self.errors += [f"{where}: {field}: {reason}" for field, reason in problems]
        if not problems and rec is not None:
            self.clips.append(_clip_from_record(rec, rec["audio"], line, self.source))

    def result(self, path: Path) -> list[Clip]:
        if self.errors:
            raise ManifestError(self.source, self.errors)
        if not self.clips:
            raise ManifestError(self.source, [f"{path}: no clips (the manifest is empty)"])
        return self.clips


def _near_misses(keys, wanted: tuple[str, ...]) -> Problems:
    """Keys that look like a misspelt wanted key that is absent (other extra keys are ignored)."""
    keys = [str(k) for k in keys]
    absent = [w for w in wanted if w not in keys]
    problems = []
    for key in keys:
        if key not in wanted and (close := difflib.get_close_matches(key, absent, n=1, cutoff=0.8)):
            problems.append((key, f'unknown key; did you mean "{close[0]}"?'))
    return problems


def _metas(fields: Mapping) -> dict:
    return {k: fields[k] for k in META_KEYS if fields.get(k) is not None}


def _file_problem(audio: str, field: str) -> Problems:
    if os.path.isfile(audio):
        return []
    return [(field, f"{'is not a file' if os.path.exists(audio) else 'file not found'}: {audio}")]


# ------------------------------------------------------------------------------------------------ audio cache


class AudioCache:
    """Wav files for audio that is not a whole file on disk, in ``folder``, named by a hash of their content
    (embedded bytes) or of their origin (file path, size, mtime, first sample, sample count, channel), so the
    same data maps to the same file and a second load writes nothing. PCM audio keeps its sample format."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _target(self, key: bytes) -> Path:
        return self.folder / f"{hashlib.sha256(key).hexdigest()[:24]}.wav"

    def embedded(self, data: bytes) -> str:
        """A wav file holding ``data`` (any format soundfile decodes); ValueError when it does not decode."""
        target = self._target(b"bytes\0" + data)
        if not target.is_file():
            try:
                samples, rate = sf.read(io.BytesIO(data), dtype="float64", always_2d=True)
                subtype = sf.info(io.BytesIO(data)).subtype
            except Exception as exc:  # noqa: BLE001 - soundfile raises several kinds for bytes that are not audio
                raise ValueError(f"embedded audio does not decode ({' '.join(str(exc).split())})") from None
            self._write(target, samples, rate, subtype)
        return str(target)

    def excerpt(self, path: str, start: int, frames: int, channel: int | None) -> str:
        """A wav file holding ``frames`` samples of ``path`` from sample ``start`` (one channel, or all)."""
        st = os.stat(path)
        key = json.dumps([os.path.abspath(path), st.st_size, st.st_mtime_ns, start, frames, channel])
        target = self._target(b"excerpt\0" + key.encode())
        if not target.is_file():
            samples, rate = sf.read(path, start=start, frames=frames, dtype="float64", always_2d=True)
            if channel is not None:
                samples = samples[:, channel : channel + 1]
            self._write(target, samples, rate, sf.info(path).subtype)
        return str(target)

    def _write(self, target: Path, samples: np.ndarray, rate: int, subtype: str) -> None:
        subtype = subtype if sf.check_format("WAV", subtype) else "FLOAT"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".", suffix=".wav.tmp", dir=self.folder)
        except OSError as exc:
            raise CacheError(exc.strerror or str(exc)) from None
        try:
            os.fchmod(fd, created_mode(0o666))
            with os.fdopen(fd, "wb") as fh:
                sf.write(fh, samples, rate, subtype=subtype, format="WAV")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# ------------------------------------------------------------------------------------------------ JSON lines


def _json_lines(path: Path) -> Iterator[tuple[int, dict | None, Problems]]:
    """(line number, object or None, problems) of each non-blank line; ``.gz`` files are decompressed."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            for line_no, raw in enumerate(fh, start=1):
                if raw.strip():
                    yield (line_no, *parse_json_line(raw))
    except (gzip.BadGzipFile, EOFError) as exc:
        raise ManifestError(str(path.absolute()), [f"{path}: not a complete gzip file ({exc})"]) from None


def _number(value, field: str, positive: bool) -> Problems:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        return [(field, f"expected a number of seconds, got {value!r}")]
    if value < 0 or (positive and value == 0):
        return [(field, f"must be {'> 0' if positive else '>= 0'} seconds, got {value}")]
    return []


# ------------------------------------------------------------------------------------------------ NeMo

NEMO_KEYS = ("audio_filepath", "text", "duration", "offset") + META_KEYS


def _read_nemo(path: Path, base: Path, cache: AudioCache, out: _Collector) -> None:
    """NeMo JSON lines: ``audio_filepath``, ``text``, ``duration`` (seconds), optional ``offset`` (seconds) and
    ``lang``/``keywords``/``context``; other keys are ignored. With an offset, or a duration that ends before
    the file does, the clip is that excerpt (written to the cache)."""
    for line_no, obj, problems in _json_lines(path):
        rec = None
        if obj is not None:
            rec, problems = _nemo_record(obj, base, cache)
        out.add(f"{path}:{line_no}", line_no, rec, problems)


def _nemo_record(obj: dict, base: Path, cache: AudioCache) -> tuple[dict, Problems]:
    problems = _near_misses(obj, NEMO_KEYS)
    rec = {"audio": "-", **{k: obj[k] for k in ("text",) if k in obj}, **_metas(obj)}
    audio = obj.get("audio_filepath")
    if "duration" not in obj:
        problems.append(("duration", 'missing (every NeMo line needs "duration", in seconds)'))
    else:
        problems += _number(obj["duration"], "duration", positive=True)
    problems += _number(obj.get("offset", 0), "offset", positive=False)
    if audio is None:
        return rec, problems + [("audio_filepath", 'missing (every NeMo line needs "audio_filepath")')]
    if not isinstance(audio, str) or not audio.strip():
        return rec, problems + [("audio_filepath", f"expected a file path, got {audio!r}")]
    audio = _resolve_audio(audio, base)
    problems += _file_problem(audio, "audio_filepath")
    if problems:
        return rec, problems
    try:
        rec["audio"] = _nemo_audio(audio, float(obj.get("offset", 0)), float(obj["duration"]), cache)
    except ValueError as exc:
        problems.append(("duration", str(exc)))
    return rec, problems


def _nemo_audio(audio: str, offset: float, duration: float, cache: AudioCache) -> str:
    try:
        info = sf.info(audio)
    except Exception as exc:  # noqa: BLE001 - soundfile raises several kinds for a file that is not audio
        raise ValueError(f"cannot read {audio} ({' '.join(str(exc).split())})") from None
    seconds = info.frames / info.samplerate
    if offset + duration > seconds + TOLERANCE_S:
        raise ValueError(
            f"offset {offset:g} s + duration {duration:g} s runs past the end of {audio} ({seconds:.3f} s)"
        )
    if offset <= TOLERANCE_S and duration >= seconds - TOLERANCE_S:
        return audio
    start = round(offset * info.samplerate)
    frames = min(round(duration * info.samplerate), info.frames - start)
    return cache.excerpt(audio, start, frames, None)


# ------------------------------------------------------------------------------------------------ datasets


def _import_extra(name: str):
    """``datasets`` or ``lhotse``, with an error naming the extra that installs it."""
    if name == "datasets":  # read local folders only: never look anything up on the Hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        return __import__(name)
    except ImportError:
        raise ImportError(
            f"data.format needs the '{name}' package: pip install 'funrl[data]' (or pip install {name})"
        ) from None


def _open_dataset(path: Path):
    """The `datasets.Dataset` saved in ``path`` (a DatasetDict folder with one split: that split)."""
    datasets = _import_extra("datasets")
    source = str(path.absolute())
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise ManifestError(
            source, [f"{path}: not a datasets folder ({exc}); write one with Dataset.save_to_disk"]
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise ManifestError(
                source,
                [f"{path}: holds the splits {', '.join(ds)}; give one split's folder, e.g. {path / next(iter(ds))}"],
            )
        ds = next(iter(ds.values()))
    missing = [c for c in ("audio", "text") if c not in ds.column_names]
    if missing:
        raise ManifestError(
            source,
            [
                f"{path}: no {' or '.join(repr(c) for c in missing)} column (it has "
                f"{', '.join(ds.column_names)}); rename one, e.g. "
                f'ds.rename_column("sentence", "text").save_to_disk(...)'
            ],
        )
    feature = ds.features["audio"]
    if isinstance(feature, datasets.Audio):
        return ds.cast_column("audio", datasets.Audio(decode=False))
    if getattr(feature, "dtype", None) in ("string", "large_string") or (
        isinstance(feature, dict) and {"bytes", "path"} <= set(feature)
    ):
        return ds
    raise ManifestError(
        source, [f"{path}: the 'audio' column is {feature}; expected an Audio column or file paths (strings)"]
    )


def _read_hf_datasets(path: Path, base: Path, cache: AudioCache, out: _Collector) -> None:
    """A folder written by ``Dataset.save_to_disk``: an ``audio`` column (an Audio feature: embedded bytes or
    a file path; or plain path strings), ``text`` and optional ``lang``/``keywords``/``context`` columns; other
    columns are ignored. Relative paths resolve against the folder; embedded audio is written to the cache."""
    ds = _open_dataset(path)
    extra = _near_misses(ds.column_names, ("audio", "text") + META_KEYS)
    if extra:
        raise ManifestError(str(path.absolute()), [f"{path}: column {k}: {why}" for k, why in extra])
    wanted = [c for c in ("audio", "text") + META_KEYS if c in ds.column_names]
    for row, item in enumerate(ds.select_columns(wanted)):
        rec = {"audio": "-", "text": item["text"], **_metas(item)}
        problems: Problems = []
        try:
            rec["audio"] = _hf_audio(item["audio"], base, cache)
        except ValueError as exc:
            problems.append(("audio", str(exc)))
        if rec["audio"] != "-":
            problems += _file_problem(rec["audio"], "audio")
        if isinstance(rec.get("keywords"), tuple):
            rec["keywords"] = list(rec["keywords"])
        out.add(f"{path}[row {row}]", row + 1, rec, problems)


def _hf_audio(value, base: Path, cache: AudioCache) -> str:
    """A file path for one ``audio`` cell: a path string, or an Audio cell ``{"bytes", "path"}``."""
    path: Any
    if isinstance(value, str):
        path = value
    elif isinstance(value, Mapping):
        if value.get("bytes"):
            return cache.embedded(value["bytes"])
        path = value.get("path")
    else:
        path = None
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"no audio (neither embedded bytes nor a file path): {value!r:.80}")
    return _resolve_audio(path, base)


# ------------------------------------------------------------------------------------------------ Lhotse

# Lhotse recipes often name languages in English; the language reward reads codes.
LANGUAGE_NAMES = {
    "english": "en",
    "chinese": "zh",
    "mandarin": "zh",
    "cantonese": "yue",
    "japanese": "ja",
    "korean": "ko",
    "german": "de",
    "french": "fr",
    "spanish": "es",
    "italian": "it",
    "portuguese": "pt",
    "dutch": "nl",
    "polish": "pl",
    "russian": "ru",
    "ukrainian": "uk",
    "arabic": "ar",
    "persian": "fa",
    "hindi": "hi",
    "turkish": "tr",
    "vietnamese": "vi",
}


def _read_lhotse(path: Path, base: Path, cache: AudioCache, out: _Collector) -> None:
    """A Lhotse CutSet manifest (JSON lines, ``.jsonl`` or ``.jsonl.gz``), one MonoCut a line, read by lhotse
    itself. A cut that covers part of its recording (or one channel of several) is written to the cache."""
    _import_extra("lhotse")
    from lhotse.serialization import deserialize_item

    for line_no, obj, problems in _json_lines(path):
        rec = None
        if obj is not None:
            try:
                cut = deserialize_item(dict(obj))
            except Exception as exc:  # noqa: BLE001 - lhotse raises several kinds for a line it cannot read
                problems = [("cut", f"lhotse cannot read it ({type(exc).__name__}: {' '.join(str(exc).split())})")]
            else:
                rec, problems = _cut_record(cut, base, cache)
        out.add(f"{path}:{line_no}", line_no, rec, problems)


def _cut_record(cut, base: Path, cache: AudioCache) -> tuple[dict, Problems]:
    from lhotse.cut import Cut, MonoCut

    rec: dict = {"audio": "-", "text": ""}
    if not isinstance(cut, Cut):
        return rec, [
            (
                "type",
                f"a {type(cut).__name__}, not a cut: give a CutSet manifest (e.g. "
                "CutSet.from_manifests(recordings=..., supervisions=...).to_file(PATH))",
            )
        ]
    if not isinstance(cut, MonoCut):
        return rec, [
            (
                "type",
                f"{type(cut).__name__} is not supported, only MonoCut (one recording); write its "
                "audio to files first, e.g. cuts.save_audios(DIR)",
            )
        ]
    custom: dict[str, Any] = {}
    for sup in cut.supervisions:
        custom.update(sup.custom or {})
    custom.update(cut.custom or {})
    problems = _near_misses(custom, META_KEYS)
    text, lang, sup_problems = _supervision_text(cut)
    rec.update(text=text, **_metas(custom))
    if lang is not None and "lang" not in rec:
        rec["lang"] = lang
    problems += sup_problems
    try:
        rec["audio"] = _cut_audio(cut, base, cache)
    except ValueError as exc:
        problems.append(("recording", str(exc)))
    return rec, problems


def _supervision_text(cut) -> tuple[str, str | None, Problems]:
    """The cut's text (its supervisions' texts in time order, joined by spaces) and language."""
    sups = sorted(cut.supervisions, key=lambda s: s.start)
    if not sups:
        return "", None, [("supervisions", 'none; every cut needs one with its text (text "" marks a noise-only clip)')]
    problems: Problems = []
    for s in sups:
        if not isinstance(s.text, str):
            problems.append(("supervisions", f"{s.id}: expected a text string, got {s.text!r}"))
        if s.start < -TOLERANCE_S or s.end > cut.duration + TOLERANCE_S:
            problems.append(
                (
                    "supervisions",
                    f"{s.id} spans {s.start:g}-{s.end:g} s, outside the cut's "
                    f"0-{cut.duration:g} s: its text would not match the audio "
                    "(cut with keep_overlapping=False, or trim_to_supervisions())",
                )
            )
    langs = {LANGUAGE_NAMES.get(s.language.strip().lower(), s.language) for s in sups if s.language}
    if len(langs) > 1:
        problems.append(("supervisions", f"several languages {sorted(langs)}; a clip has one"))
    text = " ".join(s.text.strip() for s in sups if isinstance(s.text, str) and s.text.strip())
    return text, (langs.pop() if len(langs) == 1 else None), problems


def _cut_audio(cut, base: Path, cache: AudioCache) -> str:
    """A file path for the cut's audio: its recording's file, or the cut's excerpt of it in the cache."""
    rec = cut.recording if cut.has_recording else None
    if rec is None:
        raise ValueError("the cut has no recording (cuts with features only cannot be trained on)")
    if rec.transforms:
        raise ValueError(
            "the recording has transforms (speed, volume, resampling...); write the audio to files "
            "first, e.g. cuts.save_audios(DIR)"
        )
    if len(rec.sources) != 1 or rec.sources[0].type != "file":
        kinds = ", ".join(s.type for s in rec.sources)
        raise ValueError(
            f"only a recording with one local file is supported (sources: {kinds}); write the audio "
            "to files first, e.g. cuts.save_audios(DIR)"
        )
    audio = _resolve_audio(rec.sources[0].source, base)
    if problem := _file_problem(audio, "recording"):
        raise ValueError(problem[0][1])
    channels = cut.channel if isinstance(cut.channel, list) else [cut.channel]
    whole_channels = sorted(channels) == sorted(rec.channel_ids)
    if whole_channels and cut.start <= TOLERANCE_S and cut.duration >= rec.duration - TOLERANCE_S:
        return audio
    if not whole_channels and len(channels) != 1:
        raise ValueError(f"the cut uses channels {channels} of {rec.channel_ids}; only one channel or all")
    rate = sf.info(audio).samplerate
    start = round(cut.start * rate)
    frames = round(cut.duration * rate)
    channel = None if whole_channels else rec.sources[0].channels.index(channels[0])
    return cache.excerpt(audio, start, frames, channel)
