"""Encoder states computed once, for an SFT run whose encoder is frozen from the start (``optim.cache_encoder``).

A frozen pretrained encoder (Whisper tiny.en: 8 M parameters at 50 frames/s) costs most of an SFT step while
the adapter and a small LLM are what train. Each training clip's states are computed once, before step 1; a
step then joins a clip pair's states in time (instead of encoding the joined audio) and masks time spans of the
states (instead of the features). The encoder masks padded frames, so a clip's states do not depend on the batch
it was computed in. With ``model.encoder_top_layers`` N, the cache holds the states below a Whisper encoder's last
N layers, and those layers (which train) run on them every step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from policy.models import AudioLLM
from policy.models.base import FeatureBatch

Pieces = tuple[np.ndarray, ...]  # one training item: a clip's wave, or a pair's two waves in order


class EncoderCache:
    """``id(wave) -> encoder states [T_enc, d]`` of every wave given (the arrays must stay alive); with
    ``top_layers`` N, the states below the Whisper encoder's last N layers (`WhisperAudioEncoder.below_top`)."""

    def __init__(self, model: AudioLLM, waves: Sequence[np.ndarray], batch_size: int = 16, top_layers: int = 0) -> None:
        from tqdm import tqdm

        self.states: dict[int, Tensor] = {}
        self.top_layers = top_layers
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))  # similar lengths: little padding
        starts = range(0, len(order), batch_size)
        with torch.no_grad():
            for start in tqdm(starts, desc="encoder cache", unit="batch", dynamic_ncols=True):
                idx = order[start : start + batch_size]
                enc, lengths = _encode_below(model, model.audio_features([waves[i] for i in idx]), top_layers)
                for row, i in enumerate(idx):
                    self.states[id(waves[i])] = enc[row, : int(lengths[row])].clone()

    def batch(self, items: Sequence[Pieces], time_masks: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """Zero-padded states ``[B, T, d]`` of each item (its pieces joined in time) and their lengths ``[B]``;
        ``time_masks`` spans of up to 5 frames (100 ms of Whisper's 20 ms frames) per item zeroed."""
        missing = [i for i, pieces in enumerate(items) for w in pieces if id(w) not in self.states]
        if missing:
            raise KeyError(f"batch items {missing} hold a wave the encoder cache was not built on")
        rows = [torch.cat([self.states[id(w)] for w in pieces]) for pieces in items]
        lengths = torch.tensor([r.shape[0] for r in rows])
        out = torch.zeros(len(rows), int(lengths.max()), rows[0].shape[1], dtype=rows[0].dtype)
        for b, row in enumerate(rows):
            out[b, : row.shape[0]] = row
            for _ in range(time_masks):
                w = int(rng.integers(0, min(5, row.shape[0] // 5) + 1))
                t0 = int(rng.integers(0, row.shape[0] - w + 1))
                out[b, t0 : t0 + w] = 0
        return out, lengths


def _encode_below(model: AudioLLM, batch: FeatureBatch, top_layers: int) -> tuple[Tensor, Tensor]:
    if not top_layers:
        return model.frontend.encode(batch)
    p = next(model.frontend.encoder.parameters())
    batch = batch.to(p.device, p.dtype)
    return model.frontend.encoder.below_top(batch.feats, batch.lengths, top_layers)


def cached_audio_embeds(model: AudioLLM, enc: Tensor, lengths: Tensor, top_layers: int = 0) -> list[Tensor]:
    """Per item audio embeddings ``[ceil(T / splice), llm_hidden]`` from cached states (the adapter trains, and
    with ``top_layers`` N the Whisper encoder's last N layers, run here on states from below them)."""
    p = next(model.frontend.adapter.parameters())
    enc, lengths = enc.to(p.device, p.dtype), lengths.to(p.device)
    if top_layers:
        enc, lengths = model.frontend.encoder.top(enc, lengths, top_layers)
    return model.frontend.adapt(enc, lengths)
