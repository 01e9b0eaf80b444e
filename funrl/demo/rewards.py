"""Reward plugins the built-in demo adds to the four built-in rewards (``rewards.plugins`` in grpo.yaml).

* ``noise_length``: on a noise-only clip (empty reference) the built-in ``hallucination`` reward is -1 for
  ANY output, and a model that never learned silence (no noise clips in its SFT data) essentially never
  samples the empty output: every hypothesis in the group scores the same, the group's advantages are all
  zero and GRPO gets no signal from the clip. ``noise_length`` grades the output instead — shorter is
  better — so the group has variance and the policy is pushed step by step towards stopping at once.
* ``char_accuracy``: ``1 - min(1, CER)`` on speech clips. The word-level ``wer`` reward gives a near-miss
  ("bown" for "brown") no credit, and an empty output scores the same 0 as a wrong one, so on clips the small
  model reads badly GRPO learns to say nothing (which the ``language`` reward even prefers on Mandarin clips
  it cannot read). Characters give partial credit: a partly right transcript beats silence.
"""

from __future__ import annotations

import jiwer

from rewards.text import normalize, tokens

NOISE_LENGTH_SCALE = 16  # tokens at which the penalty reaches -1


def noise_length(hyps: list[str], refs: list[str], metas: list[dict]) -> list[float | None]:
    """``-min(1, n / 16)`` for a hypothesis of n tokens on a noise-only clip; ``None`` on speech clips."""
    return [-min(1.0, len(tokens(h)) / NOISE_LENGTH_SCALE) if not tokens(r) else None for h, r in zip(hyps, refs)]


def _chars(text: str) -> str:
    """The normalised text without spaces: the characters a CER counts."""
    return normalize(text).replace(" ", "")


def char_accuracy(hyps: list[str], refs: list[str], metas: list[dict]) -> list[float | None]:
    """``1 - min(1, CER)`` over the normalised characters (spaces removed) on speech clips; ``None`` on
    noise-only clips (the hallucination rewards judge those)."""
    out: list[float | None] = []
    for h, r in zip(hyps, refs):
        ref = _chars(r)
        if not ref:
            out.append(None)
            continue
        hyp = _chars(h)
        out.append(1.0 - min(1.0, jiwer.cer(ref, hyp)) if hyp else 0.0)
    return out
