"""A test manifest of real recorded English speech from a Debian package: the Asterisk PBX's English prompts.

    apt-get download asterisk-core-sounds-en-wav asterisk-core-sounds-en     # two .deb files (no root needed)
    dpkg -x asterisk-core-sounds-en-wav_*.deb pkg && dpkg -x asterisk-core-sounds-en_*.deb pkg
    python scripts/real_speech_manifest.py pkg/usr/share/asterisk/sounds/en_US_f_Allison \\
        pkg/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz data/real_speech
    python -m funrl.eval --model MODEL --manifest data/real_speech/real_speech.jsonl

    # optional: real non-speech recordings too (hallucination), e.g. the music-on-hold package
    apt-get download asterisk-moh-opsound-wav && dpkg -x asterisk-moh-opsound-wav_*.deb moh
    python scripts/real_speech_manifest.py ... data/real_speech --non-speech moh/usr/share/asterisk/moh

The package (CC-BY-SA 3.0) holds ~570 prompts read by one professional voice (Allison Smith), 8 kHz 16-bit
wav, and a script with the text of each ("agent-pass: Please enter your password followed by the pound key.").
This keeps prompts of at least ``--min-words`` words and at most ``--max-seconds`` seconds whose text has no
digits or web addresses (their spoken form is ambiguous under the project's text normaliser), resamples them to
16 kHz and writes OUT/wav/*.wav and OUT/real_speech.jsonl (``lang: en``). ``--non-speech DIR`` adds
``--segments`` evenly spaced 4-second pieces of each wav in DIR as noise-only clips (``text: ""``): the
music-on-hold package (asterisk-moh-opsound-wav, CC-BY-SA 3.0) holds five instrumental recordings, real audio on
which any text is a hallucination. It is for checking a model on a real voice, never for training: FunRL's demo
never reads it.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from funrl.data import write_manifest

SAMPLE_RATE = 16000
_BAD = re.compile(r"[0-9]|www\.|\.org|\.com|@|\[")  # digits, addresses, [descriptions of non-speech]


def read_script(path: Path) -> dict[str, str]:
    """``name -> text`` of an Asterisk sounds script (``name: text`` lines; ``;`` comments)."""
    opener = gzip.open if path.suffix == ".gz" else open
    out: dict[str, str] = {}
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            name, sep, text = line.partition(":")
            if sep and not line.startswith(";") and name.strip() and " " not in name.strip():
                out[name.strip()] = " ".join(text.replace("...", " ").split())
    return out


def select(script: dict[str, str], sounds: Path, min_words: int) -> list[tuple[Path, str]]:
    """(wav, text) of the prompts kept: a wav exists, >= min_words words, no digits or addresses."""
    keep = []
    for name, text in sorted(script.items()):
        wav = sounds / f"{name}.wav"
        if wav.is_file() and len(text.split()) >= min_words and not _BAD.search(text):
            keep.append((wav, text))
    return keep


def non_speech_pieces(folder: Path, segments: int, seconds: float = 4.0) -> list[tuple[str, np.ndarray]]:
    """(name, 16 kHz mono samples) of ``segments`` evenly spaced ``seconds``-long pieces of each wav in ``folder``."""
    pieces = []
    for wav in sorted(folder.glob("*.wav")):
        audio = _read_16k(wav)
        size = int(seconds * SAMPLE_RATE)
        if len(audio) < size:
            continue
        for k, start in enumerate(np.linspace(0, len(audio) - size, segments).astype(int)):
            pieces.append((f"{wav.stem}_{k:02d}.wav", audio[start : start + size]))
    return pieces


def _read_16k(wav: Path) -> np.ndarray:
    audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    return soxr.resample(mono, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else mono


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sounds", type=Path, help="the en_US_f_Allison folder of asterisk-core-sounds-en-wav")
    ap.add_argument("script", type=Path, help="core-sounds-en.txt(.gz) of asterisk-core-sounds-en")
    ap.add_argument("out", type=Path, help="output folder (wav/ and real_speech.jsonl)")
    ap.add_argument("--min-words", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=20.0, help="leave out longer prompts (a few run to 30 s+)")
    ap.add_argument("--non-speech", type=Path, help="a folder of non-speech wavs (e.g. music) for noise-only clips")
    ap.add_argument("--segments", type=int, default=10, help="noise-only pieces per --non-speech wav")
    args = ap.parse_args(argv)
    for path in (args.sounds, args.script, *([args.non_speech] if args.non_speech else [])):
        if not path.exists():
            print(f"error: {path} does not exist (see --help for where the package puts it)", file=sys.stderr)
            return 2
    keep = select(read_script(args.script), args.sounds, args.min_words)
    if not keep:
        print(f"error: no prompt of {args.script} has a wav in {args.sounds}", file=sys.stderr)
        return 2
    (args.out / "wav").mkdir(parents=True, exist_ok=True)
    records, seconds = [], 0.0
    for wav, text in keep:
        audio = _read_16k(wav)
        if len(audio) > args.max_seconds * SAMPLE_RATE:
            continue
        dest = args.out / "wav" / ("__".join(wav.relative_to(args.sounds).parts))  # followme/x and x differ
        sf.write(dest, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
        seconds += len(audio) / SAMPLE_RATE
        records.append({"audio": f"wav/{dest.name}", "text": text, "lang": "en"})
    prompts = len(records)
    pieces = non_speech_pieces(args.non_speech, args.segments) if args.non_speech else []
    for name, audio in pieces:
        sf.write(args.out / "wav" / f"nonspeech__{name}", np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
        records.append({"audio": f"wav/nonspeech__{name}", "text": ""})
    manifest = write_manifest(records, args.out / "real_speech.jsonl")
    extra = f" + {len(pieces)} non-speech pieces" if pieces else ""
    print(f"{prompts} prompts, {seconds / 60:.1f} min of speech{extra} -> {manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
