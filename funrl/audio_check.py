"""Audio checks of a manifest's clips before any worker starts (training and evaluation alike).

Every file is opened by its header first (a 60-minute file is rejected by its length without being decoded),
then decoded once to check that its samples are finite. Problems come back in the manifest checks' format,
``MANIFEST:LINE: audio: reason``, all at once.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import soundfile as sf

from funrl.data import ManifestError, clip_location
from policy.messages import Clip


def audio_problem(clip: Clip, min_seconds: float, max_seconds: float) -> str | None:
    """Why ``clip``'s audio cannot be trained on, or None."""
    try:
        info = sf.info(clip.audio)
    except Exception as exc:  # noqa: BLE001 - soundfile raises several kinds for a file that is not audio
        return f"cannot read audio {clip.audio} ({type(exc).__name__}: {' '.join(str(exc).split())})"
    if info.frames <= 0 or info.samplerate <= 0:
        return f"audio file {clip.audio} is empty (0 samples)"
    seconds = info.frames / info.samplerate
    if seconds < min_seconds:
        return f"{clip.audio} is {seconds:.3f} s long, under data.min_audio_seconds={min_seconds:g}"
    if seconds > max_seconds:
        return f"{clip.audio} is {seconds:.2f} s long, over data.max_audio_seconds={max_seconds:g} (cut it)"
    try:
        samples, _ = sf.read(clip.audio, dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt body behind a valid header
        return f"audio {clip.audio} does not decode ({type(exc).__name__}: {' '.join(str(exc).split())})"
    if not bool(np.isfinite(samples).all()):
        return f"audio {clip.audio} has NaN/inf samples"
    return None


def check_clips(
    clips: Sequence[Clip], min_seconds: float, max_seconds: float, on_bad: str = "error", progress: bool = True
) -> list[Clip]:
    """The clips whose audio is fine. ``on_bad="error"``: a `ManifestError` listing every bad clip;
    ``"skip"``: each bad clip is named on stderr and left out (an error if none is left)."""
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be error or skip, got {on_bad!r}")
    items = clips
    if progress and len(clips) > 200:
        from tqdm import tqdm

        items = tqdm(clips, desc="checking audio", unit="clip", leave=False)
    bad = [(c, why) for c in items if (why := audio_problem(c, min_seconds, max_seconds))]
    if not bad:
        return list(clips)
    source = clips[0].source or "manifest"
    lines = [f"{clip_location(c)}: audio: {why}" for c, why in bad]
    if on_bad == "error":
        raise ManifestError(source, lines + ["(data.on_bad_audio=skip trains without these clips)"])
    for line in lines:
        print(f"[funrl] skipping {line}", file=sys.stderr)
    dropped = {id(c) for c, _ in bad}
    kept = [c for c in clips if id(c) not in dropped]
    if not kept:
        raise ManifestError(source, [f"{source}: every clip was skipped for bad audio"])
    return kept


def check_prompt_lengths(clips: Sequence[Clip], prompt_lengths, max_model_len: int, max_new_tokens: int) -> None:
    """Every clip's prompt ([prefix | audio | suffix] positions) plus ``max_new_tokens`` must fit in
    ``max_model_len`` (the vLLM engines' context); ``prompt_lengths(clips, limit)`` is the embedding worker's
    (`rollout.embedding.AudioEmbeddingWorker.prompt_lengths`: None for clips certainly within ``limit``). A
    `ManifestError` lists every clip that does not fit, with what to change."""
    limit = max_model_len - max_new_tokens
    lengths = prompt_lengths(list(clips), limit)
    bad = [
        f"{clip_location(c)}: audio: {c.audio}: its prompt takes {n} positions; with rollout.max_new_tokens="
        f"{max_new_tokens} that exceeds rollout.max_model_len={max_model_len}"
        for c, n in zip(clips, lengths)
        if n is not None and n > limit
    ]
    if bad:
        raise ManifestError(
            clips[0].source or "manifest",
            bad
            + [
                "(raise rollout.max_model_len, lower rollout.max_new_tokens, or leave these clips out: a lower "
                "data.max_audio_seconds with data.on_bad_audio=skip drops long clips)"
            ],
        )
