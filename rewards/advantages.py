"""Group advantages, best hypotheses and rank correlation over plain lists (no torch).

The estimators are those of training (``learner.advantage``, ``policy.grpo``), written again
here so the reward library stays free of torch; a group is one clip's G totals:

- ``grpo`` (docs/design.md#advantages, eq. 1): ``A_i = (r_i - mean(r)) / (std(r) + eps)``, unbiased std;
- ``dr_grpo``: ``A_i = r_i - mean(r)``;
- ``rloo``: ``A_i = r_i - mean_{j != i} r_j``.

Every estimator gives exactly 0 to a *flat* group (all totals equal) and to a group of G < 2.
Equality is exact: compare totals rounded as training holds them (`as_float32`).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

__all__ = ["ESTIMATORS", "EPS", "advantages", "as_float32", "best_set", "is_flat", "average_ranks", "spearman"]

ESTIMATORS = ("grpo", "dr_grpo", "rloo")
EPS = 1e-6


def as_float32(values: Sequence[float]) -> list[float]:
    """``values`` rounded to float32 (as training's ``torch.float32`` reward tensors hold them); beyond the
    float32 range a value becomes ±inf."""
    return list(array("f", values))


def is_flat(rewards: Sequence[float]) -> bool:
    """No signal in the group: all rewards equal, or fewer than 2 of them (advantage 0 either way)."""
    return len(rewards) < 2 or max(rewards) == min(rewards)


def best_set(rewards: Sequence[float]) -> frozenset[int]:
    """Indices of the hypotheses whose reward is the group's maximum (several when the best is tied)."""
    if not rewards:
        return frozenset()
    top = max(rewards)
    return frozenset(i for i, r in enumerate(rewards) if r == top)


def advantages(rewards: Sequence[float], estimator: str = "grpo", eps: float = EPS) -> list[float]:
    """The advantages of one group's rewards under ``estimator`` (one of `ESTIMATORS`)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    r = [float(x) for x in rewards]
    g = len(r)
    if is_flat(r):
        return [0.0] * g
    mean = sum(r) / g
    if estimator == "grpo":
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / (g - 1))
        return [(x - mean) / (std + eps) for x in r]
    if estimator == "dr_grpo":
        return [x - mean for x in r]
    total = sum(r)
    return [x - (total - x) / (g - 1) for x in r]


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span ([5, 1, 5] -> [2.5, 1, 2.5])."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's r of the average ranks); None when either side is constant
    or there are fewer than 2 pairs (undefined)."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} values against {len(y)}")
    if len(x) < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    m = (len(x) + 1) / 2  # the mean of any average ranks of n values
    sxy = sum((a - m) * (b - m) for a, b in zip(rx, ry))
    sxx = sum((a - m) ** 2 for a in rx)
    syy = sum((b - m) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)
