"""Audio I/O: any wav/flac (any rate, any channel count) -> 16 kHz mono float32 (soundfile + soxr)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000


def load_audio(path: str | Path, max_seconds: float | None = 30.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The file's samples as float32 mono at ``sample_rate`` (channels averaged, soxr "HQ" resampling).

    Raises ``ValueError`` naming the path and the reason for a missing, unreadable or empty file, or one
    longer than ``max_seconds`` (``None`` = no limit).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: audio file not found")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # noqa: BLE001 - soundfile raises LibsndfileError / RuntimeError / TypeError by format
        raise ValueError(f"{path}: cannot read audio ({type(err).__name__}: {err})") from None
    if data.shape[0] == 0:
        raise ValueError(f"{path}: audio file is empty (0 samples)")
    seconds = data.shape[0] / rate
    if max_seconds is not None and seconds > max_seconds:
        raise ValueError(
            f"{path}: audio is {seconds:.2f} s long, over the limit of {max_seconds:g} s "
            f"(cut the clip or raise max_seconds)"
        )
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)
