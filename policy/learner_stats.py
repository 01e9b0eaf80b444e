"""What one learner update reports, summed over micro-batches, optimizer steps and ranks.

A rank adds each micro-batch's `policy.grpo.grpo_loss` metrics (token-weighted sums, extremes) and, once per
row, the sampler agreement (`policy.grpo.logprob_agreement`); `reduce` combines the ranks (sums, maxima,
minima) and turns them into a `LearnStats`. Extremes start at -inf/+inf so a rank or micro-batch with no
valid token changes nothing; a statistic over no token at all is NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from policy.distributed import all_reduce
from policy.messages import LearnStats

_SUMS = ("loss", "clip", "kl", "ratio", "tokens", "tis_weight", "tis_clip", "diff", "diff_tokens")
_MAXES = ("ratio_max", "kl_max", "diff_max", "weight_max")
_MINS = ("ratio_min", "weight_min")


@dataclass
class UpdateSums:
    """One rank's running sums and extremes of one `Learner.update`."""

    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_SUMS, 0.0))
    maxes: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_MAXES, -math.inf))
    mins: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_MINS, math.inf))
    grad_norms: list[float] = field(default_factory=list)

    def add_loss(self, weighted_loss: float, m: dict[str, float]) -> None:
        """One micro-batch: its loss times its share of the mini-batch, and `grpo_loss`'s metrics."""
        n = m["n_tokens"]
        for key, value in (
            ("loss", weighted_loss),
            ("clip", m["clip_frac"] * n),
            ("kl", m["kl"] * n),
            ("ratio", m["ratio_mean"] * n),
            ("tokens", n),
            ("tis_weight", m["tis_weight_mean"] * n),
            ("tis_clip", m["tis_clip_frac"] * n),
        ):
            self.sums[key] += value
        self.maxes["ratio_max"] = max(self.maxes["ratio_max"], m["ratio_max"])
        self.maxes["kl_max"] = max(self.maxes["kl_max"], m["kl_max"])
        self.mins["ratio_min"] = min(self.mins["ratio_min"], m["ratio_min"])

    def add_agreement(self, a: dict[str, float]) -> None:
        """`logprob_agreement` of the pre-update policy and the sampler, once per row."""
        self.sums["diff"] += a["diff_sum"]
        self.sums["diff_tokens"] += a["n_tokens"]
        self.maxes["diff_max"] = max(self.maxes["diff_max"], a["diff_max"])
        self.maxes["weight_max"] = max(self.maxes["weight_max"], a["weight_max"])
        self.mins["weight_min"] = min(self.mins["weight_min"], a["weight_min"])

    def reduce(
        self,
        device: torch.device,
        *,
        has_reference: bool,
        lr: float,
        num_sequences: int,
        micro_batches: int,
        updates: int,
        seconds: float,
    ) -> LearnStats:
        """Collective: every rank's sums added, extremes combined; the update's `LearnStats`."""
        s = dict(zip(_SUMS, all_reduce([self.sums[k] for k in _SUMS], device=device)))
        mx = dict(zip(_MAXES, all_reduce([self.maxes[k] for k in _MAXES], op="max", device=device)))
        mn = dict(zip(_MINS, (-v for v in all_reduce([-self.mins[k] for k in _MINS], op="max", device=device))))
        steps = max(1, len(self.grad_norms))
        tokens, agreed = s["tokens"], s["diff_tokens"]

        def per_token(key: str) -> float:
            return s[key] / tokens if tokens else math.nan

        def finite(v: float) -> float:
            return v if math.isfinite(v) else math.nan

        extra = {
            "ratio_max": finite(mx["ratio_max"]),
            "ratio_min": finite(mn["ratio_min"]),
            "kl_max": finite(mx["kl_max"]) if has_reference else math.nan,
            "tis_weight_mean": per_token("tis_weight"),
            "tis_clip_frac": per_token("tis_clip"),
            "logprob_diff_mean": s["diff"] / agreed if agreed else math.nan,
            "logprob_diff_max": finite(mx["diff_max"]),
            "is_weight_min": finite(mn["weight_min"]),
            "is_weight_max": finite(mx["weight_max"]),
            "tokens": agreed,  # valid tokens of the batch (each row counted once)
            "micro_batches": float(micro_batches),
            "optimizer_steps": float(len(self.grad_norms)),
            "updates": float(updates),
        }
        return LearnStats(
            loss=s["loss"] / steps,
            kl=per_token("kl") if has_reference else math.nan,
            clip_frac=per_token("clip"),
            ratio_mean=per_token("ratio"),
            grad_norm=sum(self.grad_norms) / steps,
            lr=lr,
            num_sequences=num_sequences,
            seconds=seconds,
            extra=extra,
        )
