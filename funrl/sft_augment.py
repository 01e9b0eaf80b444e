"""Data augmentation of the SFT stage (`funrl.sft`): SpecAugment, clip pairs, word order shuffled at CTC cuts.

A small LLM trained on a few thousand transcripts learns to *recognise* each training sentence from a rough
look at the audio and recite it, long before it learns to read the audio position by position. Clip pairs
and shuffled word orders give it word sequences it has never seen, so reciting stops paying.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from policy.messages import Clip
from policy.models import AudioLLM, FeatureBatch

SAMPLES_PER_FRAME = 640  # one encoder frame = 4 fbank frames of 10 ms at 16 kHz


def spec_augment(feats: FeatureBatch, freq_masks: int, time_masks: int, rng: np.random.Generator) -> FeatureBatch:
    """Zero ``freq_masks`` bands of up to 8 mel bins and ``time_masks`` spans of up to 10 frames per clip."""
    if not freq_masks and not time_masks:
        return feats
    x = feats.feats.clone()
    n_bins = x.shape[-1]
    for b, length in enumerate(feats.lengths.tolist()):
        for _ in range(freq_masks):
            w = int(rng.integers(0, 9))
            f0 = int(rng.integers(0, n_bins - w + 1))
            x[b, :, f0 : f0 + w] = 0
        for _ in range(time_masks):
            w = int(rng.integers(0, min(10, length // 5) + 1))
            t0 = int(rng.integers(0, length - w + 1))
            x[b, t0 : t0 + w] = 0
    return FeatureBatch(x, feats.lengths, feats.mask)


def ctc_align(log_probs: np.ndarray, ids: Sequence[int], blank: int) -> list[int] | None:
    """Viterbi CTC alignment: the first frame of each target token, or None when no path exists."""
    n_frames, n_ids = log_probs.shape[0], len(ids)
    ext = np.full(2 * n_ids + 1, blank)
    ext[1::2] = ids
    n_states = ext.size
    skip = np.zeros(n_states, dtype=bool)
    skip[3::2] = ext[3::2] != ext[1:-2:2]  # label -> next different label over a blank
    score = np.full(n_states, -np.inf)
    score[:2] = log_probs[0, ext[:2]]
    back = np.zeros((n_frames, n_states), dtype=np.int64)
    for t in range(1, n_frames):
        stay, step1 = score, np.concatenate([[-np.inf], score[:-1]])
        step2 = np.where(skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        cand = np.stack([stay, step1, step2])
        best = cand.argmax(0)
        back[t] = np.arange(n_states) - best
        score = cand[best, np.arange(n_states)] + log_probs[t, ext]
    end = n_states - 1 if n_states == 1 or score[-1] >= score[-2] else n_states - 2
    if not np.isfinite(score[end]):
        return None
    path = [end]
    for t in range(n_frames - 1, 0, -1):
        path.append(back[t, path[-1]])
    path.reverse()
    first: dict[int, int] = {}
    for t, state in enumerate(path):
        if state % 2 == 1:
            first.setdefault(state // 2, t)
    return [first[j] for j in range(n_ids)] if len(first) == n_ids else None


@torch.no_grad()
def word_cuts(
    model: AudioLLM, clips: Sequence[Clip], waves: Sequence[np.ndarray], batch_size: int = 32
) -> dict[int, list[int]]:
    """``id(clip) -> sample positions between its words`` where the encoder's CTC head emits each space.

    English clips of two or more words only; clips whose alignment fails are left out.
    """
    tok = model.tokenizer
    space = tok(" ", add_special_tokens=False)["input_ids"]
    out: dict[int, list[int]] = {}
    todo = [i for i, c in enumerate(clips) if c.lang in (None, "en") and len(c.text.split()) > 1]
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        logits, lengths = model.frontend.ctc_logits(model.audio_features([waves[i] for i in idx]))
        log_probs = logits.float().log_softmax(-1).numpy()
        for row, i in enumerate(idx):
            text = " ".join(clips[i].text.split())
            ids = tok(text, add_special_tokens=False)["input_ids"]
            frames = ctc_align(log_probs[row, : int(lengths[row])], ids, int(tok.pad_token_id))
            spaces = [f for f, t in zip(frames or [], ids) if [t] == space]
            if frames is not None and len(spaces) == len(text.split()) - 1:
                out[id(clips[i])] = [min(len(waves[i]), f * SAMPLES_PER_FRAME + SAMPLES_PER_FRAME // 2) for f in spaces]
    return out


def shuffle_words(wave: np.ndarray, text: str, cuts: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The clip's word segments (split at ``cuts``) and words in one random order."""
    words = text.split()
    bounds = [0, *cuts, len(wave)]
    order = rng.permutation(len(words))
    return (np.concatenate([wave[bounds[k] : bounds[k + 1]] for k in order]), " ".join(words[k] for k in order))


def concat_pairs(
    batch: Sequence[Clip],
    audio: dict[int, np.ndarray],
    pool: Sequence[Clip],
    prob: float,
    rng: np.random.Generator,
    shuffle_prob: float = 0.0,
    cuts: dict[int, list[int]] | None = None,
    pieces: bool = False,
) -> tuple[list, list[str], list[str | None]]:
    """(waves, texts, contexts) of a batch: each clip with cuts gets its words shuffled with probability
    ``shuffle_prob``; each English speech clip, with probability ``prob``, is followed by a random English speech
    clip of ``pool`` (audio concatenated, texts joined by a space, contexts by ", "; noise-only clips are never
    joined). ``pieces``: each item is the tuple of its waves instead (one or two, in order; for
    `funrl.sft_cache.EncoderCache`)."""
    cuts = cuts or {}

    def one(c: Clip) -> tuple[np.ndarray, str]:
        if shuffle_prob > 0 and id(c) in cuts and rng.random() < shuffle_prob:
            return shuffle_words(audio[id(c)], c.text, cuts[id(c)], rng)
        return audio[id(c)], c.text

    waves, texts, contexts = [], [], []
    english = [c for c in pool if c.text and c.lang in (None, "en")]  # speech: a noise-only clip stays alone
    for c in batch:
        (wave, text), ctx = one(c), c.context
        item: tuple[np.ndarray, ...] = (wave,)
        if prob > 0 and english and c.text and c.lang in (None, "en") and rng.random() < prob:
            other = english[int(rng.integers(len(english)))]
            wave2, text2 = one(other)
            item, text = (wave, wave2), f"{text} {text2}"
            ctx = ", ".join(x for x in (ctx, other.context) if x) or None
        waves.append(item if pieces else item[0] if len(item) == 1 else np.concatenate(item))
        texts.append(text)
        contexts.append(ctx)
    return waves, texts, contexts
