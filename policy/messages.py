"""Typed messages passed between the driver and the workers (Ray actors).

Every stage of a training step returns one of these frozen dataclasses; shapes
are given in the comments (B clips, G hypotheses per clip, T tokens, L prompt
positions, H hidden size). Ragged per-clip data is a tuple of tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Clip:
    """One line of a data manifest (docs/design.md#data-manifest), paths already resolved."""

    audio: str  # absolute path to a wav/flac file
    text: str  # reference transcript; "" = noise-only clip
    lang: str | None = None  # expected language, e.g. "en", "zh"
    keywords: tuple[str, ...] = ()  # hotwords for the keyword reward / prompt context
    context: str | None = None  # optional prompt context (hotwords, contextual prompt)
    line: int = 0  # 1-based line number in the manifest (for messages)
    source: str = ""  # the manifest file the clip came from
    augment_step: int | None = None  # training step whose augmentation (data.augment, policy.augment) the audio
    # gets wherever it is loaded; None = the recording as it is (evaluation)

    def meta(self) -> dict:
        """The `metas` entry the reward library expects for this clip."""
        return {"lang": self.lang, "keywords": list(self.keywords)}


@dataclass(frozen=True)
class PromptBatch:
    """Output of the audio-embedding worker: one prompt per clip."""

    clips: tuple[Clip, ...]  # B
    prompt_embeds: tuple[Tensor, ...]  # B x [L_i, H]  ([prefix | audio | suffix])

    def __post_init__(self) -> None:
        if len(self.clips) != len(self.prompt_embeds):
            raise ValueError(f"PromptBatch: {len(self.clips)} clips but {len(self.prompt_embeds)} prompt embeds")

    @staticmethod
    def concat(parts: "list[PromptBatch]") -> "PromptBatch":
        """The prompts of ``parts`` in order as one batch."""
        return PromptBatch(
            clips=tuple(c for p in parts for c in p.clips),
            prompt_embeds=tuple(e for p in parts for e in p.prompt_embeds),
        )


@dataclass(frozen=True)
class Samples:
    """What a rollout engine sends back for a `PromptBatch`: a `RolloutBatch` without the prompts, which the
    driver already holds (so the prompt embeddings do not travel back through the object store)."""

    token_ids: Tensor  # [B, G, T] long, right-padded with 0
    mask: Tensor  # [B, G, T] float, 1 on generated tokens
    sample_logprobs: Tensor  # [B, G, T] float
    texts: tuple[tuple[str, ...], ...]  # [B][G]
    seconds: float = 0.0
    truncated: Tensor | None = None  # [B, G] bool
    policy_version: int | None = None


@dataclass(frozen=True)
class RolloutBatch:
    """Output of the vLLM rollout worker: G sampled hypotheses per prompt."""

    prompts: PromptBatch
    token_ids: Tensor  # [B, G, T] long, right-padded with 0
    mask: Tensor  # [B, G, T] float, 1 on generated tokens
    sample_logprobs: Tensor  # [B, G, T] float, log-probs vLLM reported when sampling (0 on padding)
    texts: tuple[tuple[str, ...], ...]  # [B][G] decoded hypotheses
    seconds: float = 0.0
    truncated: Tensor | None = None  # [B, G] bool, True where sampling stopped at max_new_tokens
    # (vLLM finish_reason "length"); None = all False
    policy_version: int | None = None  # learner updates behind the weights the engine sampled with (set by
    # each weight sync); the learner checks it. None: not from an engine (a hand-built batch), not checked

    def __post_init__(self) -> None:
        B, G, T = self.token_ids.shape
        if self.truncated is None:
            object.__setattr__(self, "truncated", torch.zeros(B, G, dtype=torch.bool))
        elif tuple(self.truncated.shape) != (B, G):
            raise ValueError(f"RolloutBatch.truncated has shape {tuple(self.truncated.shape)}, expected {(B, G)}")
        for name in ("mask", "sample_logprobs"):
            t = getattr(self, name)
            if tuple(t.shape) != (B, G, T):
                raise ValueError(f"RolloutBatch.{name} has shape {tuple(t.shape)}, expected {(B, G, T)}")
        if len(self.texts) != B or any(len(row) != G for row in self.texts):
            raise ValueError(f"RolloutBatch.texts must be [{B}][{G}]")
        if len(self.prompts.clips) != B:
            raise ValueError(f"RolloutBatch: {len(self.prompts.clips)} prompts for {B} rows of tokens")

    @property
    def group_size(self) -> int:
        return int(self.token_ids.shape[1])

    @staticmethod
    def of(prompts: PromptBatch, samples: Samples) -> "RolloutBatch":
        """The batch ``samples`` were drawn for ``prompts`` (checked like any batch)."""
        return RolloutBatch(prompts, **{f.name: getattr(samples, f.name) for f in fields(Samples)})

    def samples(self) -> Samples:
        """This batch without its prompts (`Samples`)."""
        return Samples(**{f.name: getattr(self, f.name) for f in fields(Samples)})

    @staticmethod
    def concat(parts: "list[RolloutBatch]", prompts: PromptBatch | None = None) -> "RolloutBatch":
        """The clips of ``parts`` in order as one batch (tokens right-padded to the longest ``T``); ``prompts``:
        the joined prompts when the caller has them (else they are joined too); ``seconds``: the longest."""
        if len(parts) == 1 and (prompts is None or prompts is parts[0].prompts):
            return parts[0]
        if prompts is None:
            prompts = PromptBatch.concat([p.prompts for p in parts])
        T = max(p.token_ids.shape[2] for p in parts)

        def pad(t: Tensor) -> Tensor:
            return torch.nn.functional.pad(t, (0, T - t.shape[2]))

        return RolloutBatch(
            prompts=prompts,
            token_ids=torch.cat([pad(p.token_ids) for p in parts]),
            mask=torch.cat([pad(p.mask) for p in parts]),
            sample_logprobs=torch.cat([pad(p.sample_logprobs) for p in parts]),
            texts=tuple(row for p in parts for row in p.texts),
            seconds=max(p.seconds for p in parts),
            truncated=torch.cat([p.truncated for p in parts]),
            policy_version=_oldest(p.policy_version for p in parts),
        )


def _oldest(versions) -> int | None:
    """The oldest weights among a batch's parts (what the learner must check), None when none is versioned."""
    known = [v for v in versions if v is not None]
    return min(known) if known else None


class StaleRolloutError(ValueError):
    """A rollout sampled with other weights than the learner's (a weight sync was missed or failed)."""


def check_policy_version(sampled: int | None, updates: int, max_lag: int = 0) -> None:
    """The weights a rollout was sampled with must be the learner's current ones (version = updates made), or,
    sampling one step off (``run.async_steps``), at most ``max_lag`` versions older."""
    if sampled is not None and not 0 <= updates - sampled <= max_lag:
        allowed = f"version {updates}" if not max_lag else f"versions {max(updates - max_lag, 0)}..{updates}"
        raise StaleRolloutError(
            f"the rollout was sampled with policy version {sampled}, but the learner is at version {updates} "
            f"({updates} updates) and takes {allowed}: the engines did not receive a weight sync"
        )


@dataclass(frozen=True)
class ScoredRollout:
    """Rollout plus its rewards and GRPO advantages (computed by the driver)."""

    rollout: RolloutBatch
    rewards: dict[str, Tensor]  # name -> [B, G] (NaN where a reward is not applicable); includes "total"
    advantages: Tensor  # [B, G]

    @staticmethod
    def concat(parts: "list[ScoredRollout]") -> "ScoredRollout":
        """The groups of ``parts`` in order as one batch (every part must have the same reward names)."""
        if len(parts) == 1:
            return parts[0]
        names = list(parts[0].rewards)
        if any(list(p.rewards) != names for p in parts):
            raise ValueError(f"ScoredRollout.concat: parts have different rewards: {[list(p.rewards) for p in parts]}")
        return ScoredRollout(
            rollout=RolloutBatch.concat([p.rollout for p in parts]),
            rewards={k: torch.cat([p.rewards[k] for p in parts]) for k in names},
            advantages=torch.cat([p.advantages for p in parts]),
        )


@dataclass(frozen=True)
class LearnStats:
    """What one learner update reports (averaged over micro-batches and epochs)."""

    loss: float
    kl: float
    clip_frac: float
    ratio_mean: float
    grad_norm: float
    lr: float
    num_sequences: int
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def payload_bytes(obj: Any) -> int:
    """Bytes of the tensors in a message (nested dataclasses, tuples, lists, dicts): what passing it to or from
    a Ray actor moves through the object store, up to the small pickled rest."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if is_dataclass(obj) and not isinstance(obj, type):
        return sum(payload_bytes(getattr(obj, f.name)) for f in fields(obj))
    if isinstance(obj, (tuple, list)):
        return sum(payload_bytes(x) for x in obj)
    if isinstance(obj, dict):
        return sum(payload_bytes(x) for x in obj.values())
    return 0
