"""Data manifests (docs/design.md#data-manifest) and the deterministic training-data iterator.

A manifest is JSONL, one clip a line::

    {"audio": "wav/a.wav", "text": "reference", "lang": "en", "keywords": ["..."], "context": "..."}

`load_manifest` validates every line before returning anything and raises one `ManifestError`
that lists every bad line as ``path:LINE: field: reason``. `ClipSampler` walks the clips epoch
by epoch in a seeded order; its position is a small dict, so a resumed run sees the same data.
Other formats (a datasets folder, Lhotse, NeMo) are read by `funrl.data_formats`;
``python -m funrl.data convert IN --format F --out manifest.jsonl`` turns them into a manifest.
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from policy.files import created_mode
from policy.messages import Clip

REQUIRED_KEYS = ("audio", "text")
OPTIONAL_KEYS = ("lang", "keywords", "context")
KNOWN_KEYS = REQUIRED_KEYS + OPTIONAL_KEYS


class ManifestError(ValueError):
    """A manifest (or records to write) has bad entries; `errors` holds one string per problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = list(errors)
        head = f"{source}: {len(errors)} problem(s); fix them and run again:"
        super().__init__("\n".join([head, *("  " + e for e in errors)]))


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _check_record(rec: Mapping) -> list[tuple[str, str]]:
    """Problems of one manifest record as (field, reason); empty when the record is valid."""
    problems: list[tuple[str, str]] = []
    for key in REQUIRED_KEYS:
        if key not in rec:
            problems.append((key, f'missing (every line needs "{key}")'))
        elif not isinstance(rec[key], str):
            problems.append((key, f"expected a string, got {_type_name(rec[key])}"))
    if isinstance(rec.get("audio"), str) and not rec["audio"].strip():
        problems.append(("audio", "empty path"))
    lang = rec.get("lang")
    if lang is not None and (not isinstance(lang, str) or not lang.strip()):
        problems.append(("lang", f'expected a language code such as "en", got {lang!r}'))
    kws = rec.get("keywords")
    if kws is not None:
        if not isinstance(kws, list):
            problems.append(("keywords", f"expected a list of strings, got {_type_name(kws)}"))
        else:
            bad = [i for i, k in enumerate(kws) if not isinstance(k, str) or not k.strip()]
            if bad:
                problems.append(("keywords", f"expected a list of non-empty strings; bad item(s) at index {bad}"))
    ctx = rec.get("context")
    if ctx is not None and not isinstance(ctx, str):
        problems.append(("context", f"expected a string, got {_type_name(ctx)}"))
    for key in rec:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1, cutoff=0.6)
            hint = f'; did you mean "{close[0]}"?' if close else f"; allowed: {', '.join(KNOWN_KEYS)}"
            problems.append((str(key), f"unknown key{hint}"))
    return problems


def parse_json_line(raw: bytes) -> tuple[dict | None, list[tuple[str, str]]]:
    """One JSON-lines line as a dict, or None and the (field, reason) problems (bad UTF-8, bad JSON, not an object)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [("line", f"not valid UTF-8 ({exc.reason} at byte {exc.start})")]
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [("json", f"malformed JSON: {exc.msg} at column {exc.colno}")]
    if not isinstance(rec, dict):
        return None, [("line", f"expected a JSON object {{...}}, got {_type_name(rec)}")]
    return rec, []


def _parse_line(raw: bytes) -> tuple[dict | None, list[tuple[str, str]]]:
    rec, problems = parse_json_line(raw)
    return rec, problems if rec is None else _check_record(rec)


def _resolve_audio(audio: str, base: Path) -> str:
    p = Path(audio).expanduser()
    return os.path.normpath(p if p.is_absolute() else base / p)


def _clip_from_record(rec: dict, audio: str, line: int, source: str) -> Clip:
    return Clip(
        audio=audio,
        text=rec["text"],
        lang=rec.get("lang"),
        keywords=tuple(rec.get("keywords") or ()),
        context=rec.get("context"),
        line=line,
        source=source,
    )


def clip_location(clip: Clip) -> str:
    """Where a clip came from, as errors name it: ``FILE:LINE``, or ``FOLDER[row N]`` (N from 0) for a clip of a
    datasets folder (`funrl.data_formats`), whose ``line`` is its row + 1."""
    if clip.source and os.path.isdir(clip.source):
        return f"{clip.source}[row {clip.line - 1}]"
    return f"{clip.source}:{clip.line}"


def load_manifest(path: str | os.PathLike, check_audio: bool = True) -> list[Clip]:
    """Read and validate a JSONL manifest; relative audio paths resolve against its folder.

    Every line is checked before anything is returned; all problems (malformed JSON, missing
    or mistyped fields, unknown keys, missing audio files when `check_audio`) are raised
    together as one `ManifestError`. Blank lines are skipped.
    """
    path = Path(path)
    source = str(path.absolute())
    if not path.is_file():
        raise ManifestError(source, [f"{path}: manifest file not found"])
    base = path.absolute().parent
    clips: list[Clip] = []
    errors: list[str] = []
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            rec, problems = _parse_line(raw)
            audio = None
            if rec is not None and not problems:
                audio = _resolve_audio(rec["audio"], base)
                if check_audio and not os.path.isfile(audio):
                    reason = "is not a file" if os.path.exists(audio) else "file not found"
                    problems.append(("audio", f"{reason}: {audio}"))
            errors += [f"{path}:{line_no}: {field}: {reason}" for field, reason in problems]
            if not problems:
                assert rec is not None and audio is not None  # a line without problems parsed and has audio
                clips.append(_clip_from_record(rec, audio, line_no, source))
    if errors:
        raise ManifestError(source, errors)
    if not clips:
        raise ManifestError(source, [f"{path}: no clips (the manifest is empty)"])
    return clips


def _record_of(item: Clip | Mapping, base: Path) -> dict:
    if isinstance(item, Clip):
        audio = Path(item.audio)
        if audio.is_absolute() and audio.is_relative_to(base):
            audio = audio.relative_to(base)
        rec = {
            "audio": audio.as_posix(),
            "text": item.text,
            "lang": item.lang,
            "keywords": list(item.keywords),
            "context": item.context,
        }
    else:
        rec = dict(item)
    out = {k: rec[k] for k in REQUIRED_KEYS if k in rec}
    out.update({k: rec[k] for k in OPTIONAL_KEYS if rec.get(k) not in (None, [], ())})
    out.update({k: v for k, v in rec.items() if k not in KNOWN_KEYS})  # kept so the check reports them
    return out


def write_manifest(clips_or_dicts: Iterable[Clip | Mapping], path: str | os.PathLike) -> Path:
    """Write clips (or manifest dicts) as JSONL, atomically (temp file + rename).

    Audio paths of `Clip`s inside the manifest's folder are written relative to it. Records are
    validated first (not the audio files); bad ones raise `ManifestError` naming the item index.
    Keys are written in the order audio, text, lang, keywords, context; empty optional ones are
    left out.
    """
    path = Path(path)
    base = path.absolute().parent
    records, errors = [], []
    for i, item in enumerate(clips_or_dicts):
        if not isinstance(item, (Clip, Mapping)):
            errors.append(f"item {i}: item: expected a Clip or a dict, got {_type_name(item)}")
            continue
        rec = _record_of(item, base)
        errors += [f"item {i}: {field}: {reason}" for field, reason in _check_record(rec)]
        records.append(rec)
    if errors:
        raise ManifestError(str(path), errors)
    base.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, fsync, then rename over it: never half a file. The file
    gets the mode an ordinary ``open(path, "w")`` would (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, created_mode(0o666))
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ClipSampler:
    """Epoch-based, seeded iterator over clips for training.

    Epoch e visits every clip once, in the order `default_rng([seed, e]).permutation(n)`
    (or file order with `shuffle=False`); a batch that reaches the end of an epoch continues
    with the next epoch's order. The position is `{"epoch", "index"}` (plus `num_clips` and
    `seed`, checked on load), so a run resumed from `state_dict()` sees identical batches.
    """

    def __init__(self, clips: list[Clip], clips_per_step: int, seed: int, shuffle: bool = True):
        if not clips:
            raise ValueError("ClipSampler: no clips to sample from")
        if int(seed) < 0:
            raise ValueError(f"ClipSampler: seed must be >= 0, got {seed}")
        if int(clips_per_step) < 1:
            raise ValueError(f"ClipSampler: clips_per_step must be >= 1, got {clips_per_step}")
        self.clips = list(clips)
        self.clips_per_step = int(clips_per_step)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.index = 0
        self._order_epoch = -1
        self._order = np.arange(0)

    def order(self, epoch: int) -> np.ndarray:
        """Indices of the clips in the order epoch `epoch` visits them."""
        n = len(self.clips)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(n)

    def _current_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            self._order, self._order_epoch = self.order(self.epoch), self.epoch
        return self._order

    def next_batch(self) -> list[Clip]:
        """The next `clips_per_step` clips; advances the position."""
        batch: list[Clip] = []
        while len(batch) < self.clips_per_step:
            order = self._current_order()
            take = min(self.clips_per_step - len(batch), len(order) - self.index)
            batch += [self.clips[i] for i in order[self.index : self.index + take]]
            self.index += take
            if self.index == len(order):
                self.epoch, self.index = self.epoch + 1, 0
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "num_clips": len(self.clips), "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore a position from `state_dict()`; a state from other data or seed is refused."""
        missing = [k for k in ("epoch", "index") if k not in state]
        if missing:
            raise ValueError(f"ClipSampler state lacks {missing}; got keys {sorted(state)}")
        for key, mine in (("num_clips", len(self.clips)), ("seed", self.seed)):
            if key in state and int(state[key]) != mine:
                raise ValueError(
                    f"ClipSampler state was saved with {key}={state[key]}, "
                    f"but this sampler has {key}={mine}: not the same data/seed"
                )
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index < len(self.clips):
            raise ValueError(
                f"ClipSampler state out of range: epoch={epoch}, index={index} for {len(self.clips)} clips"
            )
        self.epoch, self.index = epoch, index


class MixedSampler:
    """Batches with a fixed number of clips from each pool of ``quotas`` (pool name -> clips per batch, from
    `quotas`): "noise" holds the noise-only clips (``text == ""``), "lang:L" the speech clips of language L (the
    manifest's ``lang``), "context" other speech clips whose prompt carries context (keywords); the rest of each
    batch comes from every other clip (pool "speech").

    Each pool has its own `ClipSampler` (same seed, so the same epoch-based, resumable order within the
    pool); the state is every pool's position. Gives noise-only clips, or the clips of a rare language, a fixed
    share of every step, whatever their share of the manifest. Without a "noise" quota noise-only clips stay in
    the rest.
    """

    def __init__(
        self, clips: list[Clip], clips_per_step: int, quotas: Mapping[str, int], seed: int, shuffle: bool = True
    ):
        rest = clips_per_step - sum(quotas.values())
        if not quotas or min(quotas.values()) < 1 or rest < 1:
            raise ValueError(
                f"MixedSampler: need quotas >= 1 ({dict(quotas)}) summing to less than clips_per_step "
                f"({clips_per_step})"
            )
        pools: dict[str, list[Clip]] = {name: [] for name in ("speech", *quotas)}
        for clip in clips:
            pools[_pool_of(clip, quotas)].append(clip)
        for name in (*quotas, "speech"):
            if not pools[name]:
                raise EmptyPoolError(name)
        counts = {"speech": rest, **quotas}
        self.pools = {name: ClipSampler(pool, counts[name], seed, shuffle) for name, pool in pools.items()}

    def next_batch(self) -> list[Clip]:
        return [clip for sampler in self.pools.values() for clip in sampler.next_batch()]

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {name: sampler.state_dict() for name, sampler in self.pools.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, int]]) -> None:
        if set(state) != set(self.pools):
            raise ValueError(
                f"MixedSampler state needs the positions {sorted(self.pools)}; got keys {sorted(state)} "
                "(was the run started with another data.noise_per_step, data.lang_per_step or "
                "data.context_per_step?)"
            )
        for name, sampler in self.pools.items():
            sampler.load_state_dict(state[name])


class EmptyPoolError(ValueError):
    """A `MixedSampler` pool the manifest has no clip for; ``key`` is the config key that asked for it."""

    def __init__(self, pool: str):
        kind = "lang" if pool.startswith("lang:") else pool
        super().__init__(_EMPTY_POOL[kind].format(lang=pool[5:]))
        self.key = _POOL_KEY[kind]


_POOL_KEY = {
    "noise": "data.noise_per_step",
    "context": "data.context_per_step",
    "lang": "data.lang_per_step",
    "speech": "data.noise_per_step",
}
_EMPTY_POOL = {  # a MixedSampler pool with no clip: what to do
    "noise": 'data.noise_per_step > 0 but the training manifest has no noise-only clip (text ""); '
    "set data.noise_per_step=0 or add such clips",
    "context": "data.context_per_step > 0 but the training manifest has no speech clip with a context (outside "
    'data.lang_per_step\'s languages); set data.context_per_step=0 or give clips a "context"',
    "lang": "data.lang_per_step asks for {lang!r} clips but the training manifest has no speech clip with "
    '"lang": "{lang}"; drop that entry or add such clips',
    "speech": "the training manifest has no clip outside the pools of data.noise_per_step, data.lang_per_step "
    "and data.context_per_step: the rest of every batch needs some",
}


def quotas(
    noise_per_step: int = 0, lang_per_step: Mapping[str, int] | None = None, context_per_step: int = 0
) -> dict[str, int]:
    """`MixedSampler`'s pool name -> clips per batch, for the quotas that are set (an empty dict: none)."""
    out = {"noise": int(noise_per_step)} if noise_per_step else {}
    out.update({f"lang:{lang}": int(n) for lang, n in (lang_per_step or {}).items()})
    return {**out, "context": int(context_per_step)} if context_per_step else out


def _pool_of(clip: Clip, quotas: Mapping[str, int]) -> str:
    """The `MixedSampler` pool a clip belongs to: "noise", "lang:<lang>", "context" or the rest, "speech"."""
    if not clip.text:
        return "noise" if "noise" in quotas else "speech"
    if f"lang:{clip.lang}" in quotas:
        return f"lang:{clip.lang}"
    return "context" if clip.context and "context" in quotas else "speech"


def make_sampler(
    clips: list[Clip], clips_per_step: int, pools: Mapping[str, int], seed: int, shuffle: bool = True
) -> ClipSampler | MixedSampler:
    """`ClipSampler` (uniform over the manifest) or, with quotas (`quotas`), a `MixedSampler`."""
    if pools:
        return MixedSampler(clips, clips_per_step, pools, seed, shuffle)
    return ClipSampler(clips, clips_per_step, seed, shuffle)


def main(argv: list[str] | None = None) -> int:
    """``python -m funrl.data convert IN --format F --out manifest.jsonl``; exit 2 (and the reason) on bad input."""
    import argparse
    import sys

    from funrl import data as lib  # run as __main__, this module's own classes are not funrl.data's
    from funrl.data_formats import FORMATS, load_clips

    p = argparse.ArgumentParser(prog="python -m funrl.data", description="Data manifests (docs/data.md).")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "convert",
        help="write any supported data format as a JSONL manifest",
        description="Read IN in --format (every item checked, as training does) and write its "
        "clips as a JSONL manifest; audio paths inside the output's folder are "
        "written relative to it.",
    )
    c.add_argument("input", metavar="IN", help="manifest file (a datasets folder for hf_datasets)")
    c.add_argument("--format", required=True, choices=FORMATS, help="format of IN")
    c.add_argument("--out", required=True, help="the JSONL manifest to write")
    c.add_argument(
        "--audio-dir",
        default=None,
        help="where audio that is not a whole file on disk (embedded in a datasets folder, an excerpt "
        "of a longer file) is written as wav (default: .funrl_audio beside IN)",
    )
    args = p.parse_args(argv)
    if Path(args.out).is_dir():
        print(
            f"error: --out {args.out} is a folder; give a file path such as {Path(args.out) / 'train.jsonl'}",
            file=sys.stderr,
        )
        return 2
    try:
        clips = load_clips(args.input, args.format, args.audio_dir)
        out = lib.write_manifest(clips, args.out)
    except (lib.ManifestError, ImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(clips)} clips to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
