"""A reward plugin the built-in demo adds to the four built-in rewards (``rewards.plugins`` in grpo.yaml).

On a noise-only clip (empty reference) the built-in ``hallucination`` reward is -1 for ANY output, and a
model that never learned silence (no noise clips in its SFT data) essentially never samples the empty
output: every hypothesis in the group scores the same, the group's advantages are all zero and GRPO gets
no signal from the clip. ``noise_length`` grades the output instead — shorter is better — so the group
has variance and the policy is pushed step by step towards stopping at once.
"""
from __future__ import annotations

from rewards.text import tokens

NOISE_LENGTH_SCALE = 16   # tokens at which the penalty reaches -1


def noise_length(hyps: list[str], refs: list[str], metas: list[dict]) -> list[float | None]:
    """``-min(1, n / 16)`` for a hypothesis of n tokens on a noise-only clip; ``None`` on speech clips."""
    return [-min(1.0, len(tokens(h)) / NOISE_LENGTH_SCALE) if not tokens(r) else None
            for h, r in zip(hyps, refs)]
