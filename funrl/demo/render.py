"""Turn one planned demo clip (`ClipSpec`) into a 16-bit 16 kHz wav file.

Rendering is a pure function of the spec: the synthesisers are made reproducible (see tts.py)
and every random draw comes from `default_rng(spec.seed)`, so the bytes of a wav do not depend
on which worker process renders it or in which order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from funrl.demo import noise as noise_mod
from funrl.demo import text as text_mod
from funrl.demo import tts

SAMPLE_RATE = tts.SAMPLE_RATE
PEAK = 0.95
FLOOR_SNR_DB = 50.0  # clean speech gets a white noise floor this far below it


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip and write its manifest line."""

    name: str  # file stem, e.g. "test_00012"
    split: str
    text: str  # "" = noise-only clip
    lang: str | None
    keywords: tuple[str, ...]
    context: str | None
    engine: str  # "espeak", "piper" or "noise"
    voice: str = ""  # espeak voice name
    rate: int = 175  # espeak words per minute
    pitch: int = 50  # espeak pitch 0..100
    length_scale: float = 1.0  # piper speed (> 1 slower)
    noise_kind: str | None = None  # None = clean speech
    snr_db: float | None = None  # for speech mixed with noise
    level_dbfs: float = -26.0  # RMS level of the clip
    pad: tuple[float, float] = (0.2, 0.2)  # seconds of lead-in / tail around the speech
    seconds: float = 0.0  # length of a noise-only clip
    seed: int = 0

    def manifest_record(self) -> dict:
        rec: dict = {"audio": f"wav/{self.name}.wav", "text": self.text}
        if self.lang:
            rec["lang"] = self.lang
        if self.keywords:
            rec["keywords"] = list(self.keywords)
        if self.context:
            rec["context"] = self.context
        return rec


def _speech(spec: ClipSpec) -> np.ndarray:
    if spec.engine == "espeak":
        audio = tts.get_espeak().synth(spec.text, spec.voice, spec.rate, spec.pitch, seed=spec.seed)
    elif spec.engine == "piper":
        audio = tts.get_piper().synth(spec.text, length_scale=spec.length_scale, seed=spec.seed)
    else:
        raise ValueError(f"{spec.name}: unknown engine {spec.engine!r}")
    if audio.size == 0 or not np.any(audio):
        raise RuntimeError(f"{spec.name}: {spec.engine} produced no audio for {spec.text!r}")
    pad0, pad1 = (int(p * SAMPLE_RATE) for p in spec.pad)
    return np.concatenate([np.zeros(pad0, np.float32), audio, np.zeros(pad1, np.float32)])


def _babble_talkers(rng: np.random.Generator, count: int = 6) -> list[np.ndarray]:
    """Utterances of random common words by random espeak voices, for babble noise."""
    talkers = []
    for _ in range(count):
        voice = tts.ENGLISH_VARIANTS[int(rng.integers(len(tts.ENGLISH_VARIANTS)))]
        words = text_mod.random_words(rng, int(rng.integers(6, 12)))
        talkers.append(tts.get_espeak().synth(words, voice, int(rng.integers(150, 230)), int(rng.integers(20, 80))))
    return talkers


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    talkers = _babble_talkers(rng) if kind == "babble" else None
    return noise_mod.make_noise(kind, n, rng, talkers)


def _set_level(x: np.ndarray, level_dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    y = x * (10.0 ** (level_dbfs / 20.0) / rms)
    peak = float(np.max(np.abs(y)))
    if peak > PEAK:  # never clip: lower the whole clip instead
        y = y * (PEAK / peak)
    return y.astype(np.float32)


def render_audio(spec: ClipSpec) -> np.ndarray:
    """The clip's float32 16 kHz samples."""
    rng = np.random.default_rng(spec.seed)
    if spec.engine == "noise":
        audio = _noise(spec.noise_kind or "white", int(spec.seconds * SAMPLE_RATE), rng)
    else:
        audio = _speech(spec)
        if spec.noise_kind is not None:
            nz = _noise(spec.noise_kind, audio.size, rng)
            audio = noise_mod.mix_at_snr(audio, nz, float(spec.snr_db))  # type: ignore[arg-type]  # set with noise_kind
        else:  # a faint floor: no digital silence
            floor = noise_mod.white_noise(audio.size, rng)
            audio = noise_mod.mix_at_snr(audio, floor, FLOOR_SNR_DB)
    return _set_level(audio, spec.level_dbfs)


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16, rounding to nearest (explicit, so the bytes are reproducible)."""
    return np.clip(np.rint(np.asarray(audio, np.float64) * 32767.0), -32768, 32767).astype(np.int16)


def write_clip(name: str, audio: np.ndarray, out_dir: str) -> tuple[str, int]:
    """Write float audio to `<out_dir>/wav/<name>.wav` (PCM 16-bit); returns (name, samples)."""
    pcm = to_pcm16(audio)
    sf.write(Path(out_dir) / "wav" / f"{name}.wav", pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return name, int(pcm.size)


def render_to_file(spec: ClipSpec, out_dir: str) -> tuple[str, int]:
    """Render `spec` to `<out_dir>/wav/<name>.wav` (PCM 16-bit); returns (name, samples)."""
    return write_clip(spec.name, render_audio(spec), out_dir)
