"""Hypotheses cut at ``max_new_tokens`` (vLLM finish_reason "length"): DAPO's two treatments, as tensor code.

* overlong filtering (``rollout.truncated=mask``): a truncated hypothesis stays in its group (its reward still
  shapes the others' advantages) but none of its tokens enters the loss: an unfinished transcript is not
  evidence for or against its first tokens;
* soft overlong punishment (``rollout.truncated=penalty``): a reward term that is 0 up to
  ``max_new_tokens - buffer`` tokens, falls linearly to ``-penalty`` at ``max_new_tokens``, and is
  ``-penalty`` for a truncated hypothesis (it would have gone on). With ``buffer = 0`` only truncation is
  punished.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from policy.messages import RolloutBatch, ScoredRollout


def overlong_penalty(
    lengths: Tensor, truncated: Tensor, max_new_tokens: int, buffer: int = 0, penalty: float = 1.0
) -> Tensor:
    """``[B, G]`` reward term of hypotheses with ``lengths`` tokens (``truncated``: cut at the limit)."""
    if not 0 <= buffer < max_new_tokens:
        raise ValueError(f"overlong_penalty: buffer must be in [0, max_new_tokens={max_new_tokens}), got {buffer}")
    if penalty < 0:
        raise ValueError(f"overlong_penalty: penalty must be >= 0, got {penalty}")
    lengths = lengths.to(torch.float32)
    start = max_new_tokens - buffer
    ramp = (lengths - start).clamp(min=0) / buffer if buffer else torch.zeros_like(lengths)
    out = -penalty * ramp.clamp(max=1.0)
    return torch.where(truncated.to(torch.bool), torch.full_like(out, -penalty), out)


def rollout_penalty(rollout: RolloutBatch, max_new_tokens: int, buffer: int = 0, penalty: float = 1.0) -> Tensor:
    """`overlong_penalty` of every hypothesis of a rollout, ``[B, G]``."""
    return overlong_penalty(rollout.mask.sum(-1), rollout.truncated, max_new_tokens, buffer, penalty)


def mask_truncated(scored: ScoredRollout) -> ScoredRollout:
    """The batch with the loss mask of every truncated hypothesis set to 0 (rewards and advantages kept)."""
    r = scored.rollout
    if r.truncated is None or not bool(r.truncated.any()):
        return scored
    keep = (~r.truncated).to(r.mask.dtype).unsqueeze(-1)  # [B, G, 1]
    return replace(scored, rollout=replace(r, mask=r.mask * keep))
