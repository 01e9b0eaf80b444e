"""Broad-vocabulary English SFT clips: `python -m funrl.demo.broad OUT_DIR [--clips N] [--seed S]`.

The demo's own sentences draw on about 560 words in random order. A model built on a pretrained LLM
(`docs/slam_asr.md`) that learns to transcribe from them alone answers in that vocabulary whatever it hears, so
a real recording comes out as word salad. These clips give SFT sentence-like English with a vocabulary of
thousands of words:

* **Text**: a seeded walk over the word-trigram chain that the `essential-generators` wheel ships (MIT; built
  from encyclopedia prose). A walk starts at a capitalised bigram and stops at a word ending in a full stop;
  sentences of 4 to 16 plain words (letters and apostrophes) with at most one more capitalised word are kept,
  lower-cased and without punctuation, each once. Locally they read like English; as a whole they need not
  make sense, which is fine for learning to hear words.
* **Voices**: the demo's (the piper voice for half of the clips, espeak-ng's English variants for the rest, at
  random speeds and pitches), a fifth mixed with the demo's noises at 5-20 dB SNR, and a third band-limited to
  a telephone line's 8 kHz sampling (the audio is resampled to 8 kHz and back).

The folder holds `broad_train.jsonl`, `wav/` and a `DONE` stamp of the parameters; a second call with the same
ones returns at once. `python -m funrl.sft data.broad_clips=N` builds (or reuses) it and trains on it beside
the other clips.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from funrl.cli_help import doc_parser
from funrl.demo.build import remove_stale_builds, render_all
from funrl.demo.noise import NOISE_KINDS
from funrl.demo.plan import voice_fields
from funrl.demo.render import ClipSpec, render_audio, write_clip
from funrl.demo.tts import check_voices, telephone_16k
from funrl.extras import require
from policy.files import replace_dir

VERSION = 1  # bump when the text walk or the rendering changes (invalidates built folders)
MANIFEST = "broad_train.jsonl"
MIN_WORDS, MAX_WORDS = 4, 16
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?[.,;:]?")
_START = re.compile(r"[A-Z][a-z]+ [a-z]+")
_PURPOSE = "broad-vocabulary SFT text (funrl.demo.broad)"


@lru_cache(maxsize=1)
def _chain() -> tuple[dict, tuple[str, ...]]:
    """The trigram chain (bigram -> next words and weights) and its sentence-start bigrams, sorted."""
    from importlib.resources import files

    require("essential_generators", "slam", _PURPOSE)
    path = files("essential_generators") / "markov_textgen.json"
    chain = json.loads(path.read_text(encoding="utf-8"))
    return chain, tuple(sorted(k for k in chain if _START.fullmatch(k)))


def _walk(chain: dict, start: str, rng: np.random.Generator) -> list[str]:
    words = start.split()
    while len(words) <= MAX_WORDS and not words[-1].endswith("."):
        entry = chain.get(f"{words[-2]} {words[-1]}")
        if not entry or not entry.get("transitions"):
            break
        w = np.asarray(entry["weights"], dtype=np.float64)
        words.append(entry["transitions"][int(rng.choice(w.size, p=w / w.sum()))])
    return words


def _clean(words: list[str]) -> str | None:
    """The sentence lower-cased without punctuation, or None when it is not one to keep."""
    if not words[-1].endswith(".") or not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    if not all(_WORD.fullmatch(w) for w in words) or sum(w[0].isupper() for w in words[1:]) > 1:
        return None
    return " ".join(w.rstrip(".,;:").lower() for w in words)


def broad_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences from the chain; the same ``seed`` gives the same list."""
    chain, starts = _chain()
    rng = np.random.default_rng([seed, 0xB40AD])
    out: dict[str, None] = {}
    for _ in range(200 * n + 1000):
        if len(out) == n:
            return list(out)
        text = _clean(_walk(chain, starts[int(rng.integers(len(starts)))], rng))
        if text is not None:
            out.setdefault(text)
    raise RuntimeError(f"broad_sentences: only {len(out)} of {n} distinct sentences found; ask for fewer clips")


@dataclass(frozen=True)
class BroadSpec(ClipSpec):
    """A demo clip spec plus a telephone band (resampled to 8 kHz and back)."""

    telephone: bool = False


def plan_broad(n: int, seed: int = 0) -> list[BroadSpec]:
    """The ``n`` clips' text, voice, noise, level and band, all drawn here from ``seed``."""
    return plan_clips(broad_sentences(n, seed), seed, "broad")


def plan_clips(texts: list[str], seed: int, prefix: str) -> list[BroadSpec]:
    """A clip of each text, named ``<prefix>_00000``...: voice, noise, level and band drawn from ``seed``."""
    rng = np.random.default_rng([seed, 0xB40AE])
    specs = []
    for i, text in enumerate(texts):
        fields = voice_fields(rng, "en", piper=bool(rng.random() < 0.5))
        noisy = rng.random() < 0.2
        specs.append(
            BroadSpec(
                name=f"{prefix}_{i:05d}",
                split=f"{prefix}_train",
                text=text,
                lang="en",
                keywords=(),
                context=None,
                noise_kind=NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))] if noisy else None,
                snr_db=round(float(rng.uniform(5.0, 20.0)), 2) if noisy else None,
                level_dbfs=round(float(rng.uniform(-32.0, -20.0)), 2),
                pad=(round(float(rng.uniform(0.1, 0.5)), 3), round(float(rng.uniform(0.1, 0.5)), 3)),
                seed=int(rng.integers(2**31)),
                telephone=bool(rng.random() < 1 / 3),
                **fields,
            )
        )
    return specs


def render_broad(spec: BroadSpec, out_dir: str) -> tuple[str, int]:
    """Render ``spec`` to ``<out_dir>/wav/<name>.wav``; returns (name, samples)."""
    audio = render_audio(spec)
    if spec.telephone:
        audio = telephone_16k(audio)
    return write_clip(spec.name, audio, out_dir)


def _key(n: int, seed: int) -> str:
    return hashlib.sha256(f"broad v{VERSION} n={n} seed={seed}".encode()).hexdigest()[:16]


def build_broad_data(out_dir: str | os.PathLike, n: int, seed: int = 0, progress: bool = True) -> Path:
    """Build (or reuse) ``n`` broad clips in ``out_dir``; returns the manifest's path."""

    def plan() -> list[BroadSpec]:
        specs = plan_broad(n, seed)
        _chain.cache_clear()  # the chain is ~1 GB of Python objects: not kept for the training that follows
        return specs

    return build_clip_folder(out_dir, _key(n, seed), plan, MANIFEST, "broad clips", progress)


def build_clip_folder(
    out_dir: str | os.PathLike,
    key: str,
    plan: Callable[[], list[BroadSpec]],
    manifest: str,
    what: str,
    progress: bool = True,
) -> Path:
    """Render ``plan()``'s clips into ``out_dir`` with ``manifest`` beside them, unless its ``DONE`` stamp is
    already ``key``; returns the manifest's path. The folder is written under a temporary name and renamed when
    complete, so a killed build leaves nothing half-made."""
    out = Path(out_dir).absolute()
    if (out / "DONE").is_file() and (out / "DONE").read_text().strip() == key:
        return out / manifest
    if out.exists() and not (out / "DONE").is_file() and any(out.iterdir()):
        raise FileExistsError(f"{out} holds files the {what} builder did not write; choose another folder")
    check_voices()
    specs = plan()
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(out)  # temp folders of killed builds
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "wav").mkdir(parents=True)
    try:
        job = functools.partial(render_broad, out_dir=str(tmp))
        render_all(specs, job, min(2, os.cpu_count() or 1) if len(specs) >= 300 else 1, progress, what)
        lines = [json.dumps(s.manifest_record()) for s in specs]
        (tmp / manifest).write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp / "DONE").write_text(key + "\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / manifest


def folder_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The command line of a clip-folder builder: OUT_DIR, ``--clips``, ``--seed``; ``doc`` (its module doc)
    is the help text."""
    ap = doc_parser(doc, prog)
    ap.add_argument("out_dir", help="folder to create (reused when already built with these parameters)")
    ap.add_argument("--clips", type=int, default=4000, help="how many clips (default 4000)")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def print_summary(path: Path) -> None:
    """One line on stderr: the manifest, its clips and their distinct words."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    vocab = {w for r in rows for w in r["text"].split()}
    print(f"{path}: {len(rows)} clips, {len(vocab)} distinct words", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = folder_parser("python -m funrl.demo.broad", __doc__).parse_args(argv)
    print_summary(build_broad_data(args.out_dir, args.clips, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
