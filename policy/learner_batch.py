"""What one learner rank runs a forward on: the batch as N = B*G rows, this rank's micro-batches, and the
FSDP root module (`PolicyForward`) that turns one micro-batch into ``[n, T]`` log-probs.

With ``model.train_encoder`` the prompt embeddings are recomputed from the clips' audio inside the root's
forward (so the encoder gets gradients); each clip's encoder pass is shared by its G hypotheses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from policy.distributed import rank_micro_batches
from policy.messages import Clip, RolloutBatch, ScoredRollout
from policy.models import AudioLLM, FeatureBatch


@dataclass(frozen=True)
class AudioInputs:
    """Audio of the distinct clips of one micro-batch; ``index[i]``: the clip of row i (into ``feats``)."""

    feats: FeatureBatch
    contexts: tuple[str | None, ...]
    index: tuple[int, ...]


class PolicyForward(nn.Module):
    """The FSDP root: rows -> ``[n, T]`` log-probs, so every parameter is used inside the root's hooks.

    ``ref_frontend``: a frozen copy of the starting frontend (LoRA + train_encoder: the reference policy
    needs the untrained encoder, while its LLM is the same model with the adapters disabled).
    """

    def __init__(self, model: AudioLLM, ref_frontend: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.ref_frontend = ref_frontend

    def forward(
        self,
        prompt_embeds: list[Tensor] | None,
        ids: Tensor,
        mask: Tensor,
        audio: AudioInputs | None = None,
        use_ref_frontend: bool = False,
        prompt_index: tuple[int, ...] | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """``prompt_index`` given: ``prompt_embeds`` (or the clips of ``audio``) are distinct prompts, each
        run once for its rows (`policy.models.packing`); else one prompt per row."""
        if audio is not None:
            frontend = self.model.frontend
            if use_ref_frontend:
                if self.ref_frontend is None:
                    raise ValueError("PolicyForward: use_ref_frontend without a reference frontend")
                frontend = self.ref_frontend
            clips = self.model.build_prompt_embeds(frontend(audio.feats), list(audio.contexts))
            prompt_embeds = clips if prompt_index is not None else [clips[j] for j in audio.index]
        if prompt_embeds is None:
            raise ValueError("PolicyForward: give prompt_embeds or audio")
        return self.model.sequence_logprobs(prompt_embeds, ids, mask, prompt_index, temperature=temperature)


@dataclass
class Rows:
    """A rollout as N = B*G rows (row = b*G + g)."""

    prompts: list[Tensor]  # N x [L, H] (the clip's prompt embeds, shared by its G rows)
    ids: Tensor  # [N, T] long
    mask: Tensor  # [N, T] float
    adv: Tensor  # [N] float
    clip: list[int]  # N: the clip (0..B-1) of each row
    rollout: RolloutBatch
    sample_logp: Tensor  # [N, T] float: the sampler's (vLLM's) log-probs of the same tokens

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, rows: list[int]) -> "Rows":
        """These rows only (in this order); ``clip`` keeps indexing the whole rollout's clips."""
        return Rows(
            [self.prompts[i] for i in rows],
            self.ids[rows],
            self.mask[rows],
            self.adv[rows],
            [self.clip[i] for i in rows],
            self.rollout,
            self.sample_logp[rows],
        )


@dataclass
class MicroBatch:
    rows: list[int]
    dummy: bool  # padding micro-batch: its mask is all zero
    width: int  # columns kept (up to the last valid token of these rows)
    clips: tuple[int, ...] = ()  # the distinct clips of these rows, in order of first row
    index: tuple[int, ...] = ()  # per row: its clip's position in ``clips``
    audio: AudioInputs | None = None


def flatten_rollout(r: RolloutBatch, adv: Tensor | None = None) -> Rows:
    """Rows of a rollout (advantages [N] or zeros)."""
    B, G, T = r.token_ids.shape
    prompts = [r.prompts.prompt_embeds[b] for b in range(B) for _ in range(G)]
    adv = torch.zeros(B * G) if adv is None else adv
    return Rows(
        prompts,
        r.token_ids.reshape(B * G, T).long(),
        r.mask.reshape(B * G, T).to(torch.float32),
        adv,
        [b for b in range(B) for _ in range(G)],
        r,
        r.sample_logprobs.reshape(B * G, T).to(torch.float32),
    )


def mini_batch_rows(data: Rows, parts: int) -> list[list[int]]:
    """Rows of each of ``parts`` optimizer steps (``learner.mini_batches``): whole groups (a clip's G rows
    stay together), clips split into contiguous, near-equal runs in rollout order; never an empty part
    (fewer parts when the batch has fewer clips, e.g. after dynamic sampling dropped groups)."""
    if parts < 1:
        raise ValueError(f"mini_batch_rows: parts must be >= 1, got {parts}")
    clips = list(dict.fromkeys(data.clip))
    parts = min(parts, len(clips))
    bounds = [round(i * len(clips) / parts) for i in range(parts + 1)]
    out = []
    for j in range(parts):
        chosen = set(clips[bounds[j] : bounds[j + 1]])
        out.append([i for i, c in enumerate(data.clip) if c in chosen])
    return out


def flatten_batch(batch: ScoredRollout) -> Rows:
    """Rows of the batch; FloatingPointError for non-finite advantages, ValueError for bad shapes."""
    r = batch.rollout
    B, G, T = r.token_ids.shape
    if tuple(batch.advantages.shape) != (B, G):
        raise ValueError(f"ScoredRollout.advantages has shape {tuple(batch.advantages.shape)}, expected {(B, G)}")
    adv = batch.advantages.detach().reshape(B * G).to(torch.float32)
    if not bool(torch.isfinite(adv).all()):
        bad = (~torch.isfinite(batch.advantages)).nonzero().tolist()
        raise FloatingPointError(
            f"learner.update: advantages contain NaN/inf at [clip, hypothesis] {bad[:8]}; "
            "check the rewards of these clips (no weights were changed)"
        )
    return flatten_rollout(r, adv)


def plan_micro_batches(
    data: Rows,
    rank: int,
    world_size: int,
    micro_batch: int,
    features: Callable[[list[int]], FeatureBatch] | None = None,
) -> list[MicroBatch]:
    """This rank's micro-batches (`rank_micro_batches`), each trimmed to its longest completion; an empty
    one becomes a dummy (row 0, mask zero). ``features(clips)``: the audio features of those clips, when
    the prompts are to be recomputed from audio."""
    out = []
    for rows in rank_micro_batches(len(data), rank, world_size, micro_batch):
        dummy = not rows
        rows = rows or [0]
        valid = data.mask[rows].sum(dim=0).nonzero()
        width = int(valid.max()) + 1 if (len(valid) and not dummy) else 1
        clips = list(dict.fromkeys(data.clip[i] for i in rows))
        index = tuple(clips.index(data.clip[i]) for i in rows)
        audio = None
        if features is not None:
            contexts = tuple(data.rollout.prompts.clips[c].context for c in clips)
            audio = AudioInputs(features(clips), contexts, index)
        out.append(MicroBatch(rows, dummy, width, tuple(clips), index, audio))
    return out


def load_waves(
    data: Rows, max_seconds: float | None, augment: Callable[[np.ndarray, Clip], np.ndarray] | None = None
) -> list[np.ndarray]:
    """16 kHz mono samples of every clip of the rollout (for train_encoder); ``augment``: a `policy.augment.Augmenter`,
    so the learner hears each clip as the embedding worker did (the clip's ``augment_step``)."""
    from policy.models.audio import load_audio

    waves = [load_audio(c.audio, max_seconds=max_seconds) for c in data.rollout.prompts.clips]
    return waves if augment is None else [augment(w, c) for w, c in zip(waves, data.rollout.prompts.clips)]
