"""Score a rollout with the reward library and turn rewards into GRPO advantages.

The glue between ``rewards.score_batch`` (lists of dicts, one per hypothesis) and
the tensors the learner consumes: every reward becomes a ``[B, G]`` tensor (NaN
where a reward does not apply, e.g. ``keyword`` on a clip without keywords).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

import rewards
from policy.grpo import compute_advantages
from policy.messages import PromptBatch, RolloutBatch, ScoredRollout


def _in_rollout(exc: rewards.RewardError, item: int, rollout: RolloutBatch, hyps: list[str]) -> Exception:
    """The library's error about hypothesis ``exc.item`` of the flat batch, located in the rollout:
    a NaN / inf becomes a ``FloatingPointError`` (the run stops, exit 1), any other stays a ``RewardError``."""
    b, g = divmod(item, rollout.group_size)
    where = f"clip {b} ({rollout.prompts.clips[b].audio}), hypothesis {g}"
    if isinstance(exc, rewards.NonFiniteRewardError):
        value = "NaN" if math.isnan(exc.value) else ("inf" if exc.value > 0 else "-inf")
        return FloatingPointError(
            f"reward {exc.reward!r} is {value} for {where} ({hyps[item]!r:.60}): check the "
            "reward functions and plugins; the step was stopped before any update"
        )
    return rewards.RewardError(f"{exc}; in this rollout: {where}", reward=exc.reward, item=exc.item)


def score_rollout(
    rollout: RolloutBatch, weights: Mapping[str, float] | None = None, normalizer: str = "basic"
) -> dict[str, Tensor]:
    """Every reward of non-zero weight and ``"total"`` as ``[B, G]`` float tensors (NaN = not applicable);
    ``normalizer``: the text normaliser of wer / keyword (``rewards.normalizer``: basic, whisper_en).

    A reward of weight 0 is not run and has no entry. A NaN / inf reward or total is a ``FloatingPointError``
    naming the reward, the clip and the hypothesis.
    """
    clips = rollout.prompts.clips
    G = rollout.group_size
    hyps = [h for row in rollout.texts for h in row]
    refs = [c.text for c in clips for _ in range(G)]
    metas = [c.meta() for c in clips for _ in range(G)]
    weights = dict(weights) if weights is not None else None
    try:
        scored = rewards.score_batch(hyps, refs, metas, weights=weights, normalizer=normalizer)
    except rewards.RewardError as exc:
        if exc.item is None:
            raise
        raise _in_rollout(exc, exc.item, rollout, hyps) from exc
    names = [name for name, w in rewards.resolve_weights(weights).items() if w != 0.0] + ["total"]
    out = {}
    for name in names:
        vals = [math.nan if v is None else float(v) for v in (s[name] for s in scored)]
        out[name] = torch.tensor(vals, dtype=torch.float32).view(len(clips), G)
    if not bool(torch.isfinite(out["total"]).all()):  # finite in float64, beyond float32
        bad = torch.nonzero(~torch.isfinite(out["total"])).tolist()
        raise FloatingPointError(
            f"reward total is NaN/inf for (clip, hypothesis) {bad[:5]}: check the reward functions "
            "and plugins; the step was stopped before any update"
        )
    return out


def score_and_advantage(
    rollout: RolloutBatch,
    weights: Mapping[str, float] | None = None,
    eps: float = 1e-6,
    estimator: str = "grpo",
    extra: Mapping[str, Tensor] | None = None,
    normalizer: str = "basic",
) -> ScoredRollout:
    """Rewards -> advantages within each clip's group (`policy.grpo.compute_advantages`, docs/design.md#advantages).
    ``extra``: reward terms computed outside the reward library from the rollout's tokens (e.g.
    ``"overlong"``, `policy.truncation`), ``[B, G]`` each, added to the total with weight 1."""
    scores = score_rollout(rollout, weights, normalizer)
    for name, term in (extra or {}).items():
        if tuple(term.shape) != tuple(scores["total"].shape) or name in scores:
            raise ValueError(
                f"score_and_advantage: extra reward {name!r} must be new and [B, G] = "
                f"{tuple(scores['total'].shape)}, got {tuple(term.shape)}"
            )
        scores = {
            **{k: v for k, v in scores.items() if k != "total"},
            name: term.float(),
            "total": scores["total"] + term.float(),
        }
    return ScoredRollout(
        rollout=rollout, rewards=scores, advantages=compute_advantages(scores["total"], estimator, eps)
    )


def select_groups(scored: ScoredRollout, idx: list[int]) -> ScoredRollout:
    """The groups (clips) ``idx`` of a scored batch, in that order."""
    r = scored.rollout
    keep = torch.tensor(idx, dtype=torch.long)
    prompts = PromptBatch(
        clips=tuple(r.prompts.clips[i] for i in idx), prompt_embeds=tuple(r.prompts.prompt_embeds[i] for i in idx)
    )
    rollout = RolloutBatch(
        prompts=prompts,
        token_ids=r.token_ids[keep],
        mask=r.mask[keep],
        sample_logprobs=r.sample_logprobs[keep],
        texts=tuple(r.texts[i] for i in idx),
        seconds=r.seconds,
        truncated=None if r.truncated is None else r.truncated[keep],
        policy_version=r.policy_version,
    )
    return ScoredRollout(
        rollout=rollout, rewards={k: v[keep] for k, v in scored.rewards.items()}, advantages=scored.advantages[keep]
    )


def drop_flat_groups(scored: ScoredRollout) -> tuple[ScoredRollout | None, int]:
    """Dynamic sampling: remove the clips whose G rewards are all equal (advantage 0).

    Returns the reduced batch (None when every group was flat) and how many were dropped.
    """
    total = scored.rewards["total"]
    keep = (total.amax(dim=1) != total.amin(dim=1)).nonzero().flatten()
    dropped = int(total.shape[0] - keep.numel())
    if dropped == 0:
        return scored, 0
    if keep.numel() == 0:
        return None, dropped
    return select_groups(scored, keep.tolist()), dropped
