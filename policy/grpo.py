"""GRPO math of the Fun-ASR technical report (eqs. 1-3), as pure tensor functions.

docs/design.md#grpo-math has the math with every variant; in short:

- eq. 1, group-relative advantage: ``A_i = (r_i - mean(r)) / (std(r) + eps)``, unbiased std;
- eq. 3, importance ratio: ``rho_{i,t} = exp(logp_{i,t} - old_logp_{i,t})``;
- eq. 2, clipped objective with a KL penalty to the frozen reference, as a loss::

    L = -1/G sum_i 1/|o_i| sum_t [min(rho A_i, clip(rho, 1-eps, 1+eps) A_i) - beta KL_{i,t}]

Two guards on top of the paper's loss, both about what the sampler (vLLM) drew:

- ``kl_clamp``: the per-token KL estimate is bounded to ``[-kl_clamp, kl_clamp]`` (verl bounds its
  low-variance KL to [-10, 10]). k3 = exp(ref - logp) - (ref - logp) - 1 grows exponentially when a sampled
  token is far likelier under the reference than under the policy (a token the policy has all but ruled
  out, e.g. text on a noise clip that the hallucinating reference still likes); one such token can
  dominate a whole batch's loss and gradient;
- ``tis_cap`` (truncated importance sampling, verl's TIS): the policy-gradient term of each token is
  weighted by ``min(exp(old_logp - rollout_logp), tis_cap)``, correcting for a sampler whose log-probs
  differ from the learner's (a bf16 engine, a stale weight); the KL term is not weighted.

`logprob_agreement` measures that difference: |rollout_logp - logp| and the importance weight range.

No model and no config objects here: the learner passes tensors in and gets a
scalar loss plus float metrics back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KL_KINDS = ("k1", "k2", "k3")
AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def group_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """Eq. 1: rewards [B, G] -> advantages [B, G], normalised within each group (row).

    A group whose rewards are all equal (and every group of size G = 1) gets
    advantages of exactly 0. Non-finite rewards raise ValueError.
    """
    if eps < 0:
        raise ValueError(f"group_advantages: eps must be >= 0, got {eps}")
    r = _group_rewards(rewards, "group_advantages")
    if r.shape[1] < 2:
        return torch.zeros_like(r)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True)  # unbiased (torch default)
    return _zero_flat_groups(r, (r - mean) / (std + eps))


def _zero_flat_groups(r: Tensor, adv: Tensor) -> Tensor:
    """``adv`` with every flat group (all rewards equal) set to exactly 0: float rounding of the mean
    would otherwise leave ~1e-8 where there is no signal."""
    flat = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)
    return torch.where(flat, torch.zeros_like(adv), adv)


def _group_rewards(rewards: Tensor, where: str) -> Tensor:
    if rewards.dim() != 2:
        raise ValueError(f"{where}: rewards must be [B, G], got shape {_shape(rewards)}")
    r = rewards.detach()
    r = r if r.is_floating_point() else r.to(torch.float32)
    if r.numel() and not bool(torch.isfinite(r).all()):
        raise ValueError(f"{where}: rewards contain NaN or inf: {r.tolist()}")
    return r


def dr_grpo_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """Dr. GRPO: ``A_i = r_i - mean(r)`` within each group, no division by the std (which up-weights groups
    whose rewards barely differ). ``eps`` is unused (one signature for the family)."""
    r = _group_rewards(rewards, "dr_grpo_advantages")
    if r.shape[1] < 2:
        return torch.zeros_like(r)
    return _zero_flat_groups(r, r - r.mean(dim=1, keepdim=True))


def rloo_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """RLOO: ``A_i = r_i - mean_{j != i} r_j``, the leave-one-out baseline (= G / (G - 1) (r_i - mean)).
    ``eps`` is unused."""
    r = _group_rewards(rewards, "rloo_advantages")
    G = r.shape[1]
    if G < 2:
        return torch.zeros_like(r)
    others = (r.sum(dim=1, keepdim=True) - r) / (G - 1)
    return _zero_flat_groups(r, r - others)


# name -> (rewards [B, G], eps) -> advantages [B, G]; `learner.advantage` picks one
ADVANTAGE_ESTIMATORS = {"grpo": group_advantages, "dr_grpo": dr_grpo_advantages, "rloo": rloo_advantages}


def compute_advantages(rewards: Tensor, estimator: str = "grpo", eps: float = 1e-6) -> Tensor:
    """Rewards ``[B, G]`` -> advantages ``[B, G]`` with the estimator named (`ADVANTAGE_ESTIMATORS`)."""
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose one of {', '.join(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[estimator](rewards, eps)


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token KL estimate between the policy and the reference, [N, T] -> [N, T].

    k1 = logp - ref;  k2 = 0.5 (logp - ref)^2;  k3 = exp(ref - logp) - (ref - logp) - 1.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kl_penalty: unknown kind {kind!r}; choose one of {', '.join(KL_KINDS)}")
    if _shape(logp) != _shape(ref_logp):
        raise ValueError(f"kl_penalty: logp has shape {_shape(logp)} but ref_logp has shape {_shape(ref_logp)}")
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


def _check_inputs(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None, advantages: Tensor, mask: Tensor) -> None:
    if logp.dim() != 2:
        raise ValueError(f"grpo_loss: logp must be [N, T], got shape {_shape(logp)}")
    named = {"old_logp": old_logp, "mask": mask}
    if ref_logp is not None:
        named["ref_logp"] = ref_logp
    for name, t in named.items():
        if _shape(t) != _shape(logp):
            raise ValueError(f"grpo_loss: {name} has shape {_shape(t)}, expected {_shape(logp)} like logp")
    if _shape(advantages) != (logp.shape[0],):
        raise ValueError(
            f"grpo_loss: advantages must be [N] = ({logp.shape[0]},) for logp of shape "
            f"{_shape(logp)}, got shape {_shape(advantages)}"
        )


def _check_options(
    clip_low: float,
    clip_high: float,
    beta: float,
    agg: str,
    kl_kind: str,
    loss: str,
    ref_logp: Tensor | None,
    norm_len: int | None,
) -> None:
    if agg not in AGG_MODES:
        raise ValueError(f"grpo_loss: unknown agg {agg!r}; choose one of {', '.join(AGG_MODES)}")
    if agg == "seq-mean-token-sum-norm" and not (norm_len and norm_len > 0):
        raise ValueError(
            "grpo_loss: agg 'seq-mean-token-sum-norm' divides by a constant length: pass "
            f"norm_len > 0 (e.g. the rollout's max_new_tokens), got {norm_len}"
        )
    if kl_kind not in KL_KINDS:
        raise ValueError(f"grpo_loss: unknown kl_kind {kl_kind!r}; choose one of {', '.join(KL_KINDS)}")
    if loss not in POLICY_LOSSES:
        raise ValueError(f"grpo_loss: unknown loss {loss!r}; choose one of {', '.join(POLICY_LOSSES)}")
    for name, eps in (("clip_eps_low", clip_low), ("clip_eps_high", clip_high)):
        if not 0.0 < eps < 1.0:
            raise ValueError(f"grpo_loss: {name} (or clip_eps) must be in (0, 1), got {eps}")
    if beta < 0.0:
        raise ValueError(f"grpo_loss: beta must be >= 0, got {beta}")
    if ref_logp is None and beta > 0.0:
        raise ValueError("grpo_loss: ref_logp is None but beta > 0; pass the reference log-probs")


# ---------------------------------------------------------------- policy losses: one signature
# (logp, old_logp, advantages [N, 1], valid [N, T], clip_low, clip_high) -> PolicyTerms; padding already zeroed


@dataclass(frozen=True)
class PolicyTerms:
    objective: Tensor  # [N, T] per-token surrogate to maximise
    ratio: Tensor  # [N, T] the importance ratio it used (GSPO: the sequence's, on each of its tokens)
    clipped: Tensor  # [N, T] bool: the clipped branch is active (no policy gradient through the ratio)


def _clipped_surrogate(ratio: Tensor, adv: Tensor, clip_low: float, clip_high: float) -> PolicyTerms:
    surr = ratio * adv
    surr_clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    return PolicyTerms(torch.minimum(surr, surr_clipped), ratio, surr_clipped < surr)


def ppo_clip_objective(
    logp: Tensor, old_logp: Tensor, adv: Tensor, valid: Tensor, clip_low: float, clip_high: float
) -> PolicyTerms:
    """Eq. 2's token-level clipped ratio ``min(rho A, clip(rho, 1 - low, 1 + high) A)``; low = high is PPO/GRPO,
    high > low is DAPO's clip-higher (more room for unlikely tokens to grow)."""
    return _clipped_surrogate(torch.exp(logp - old_logp), adv, clip_low, clip_high)


def gspo_objective(
    logp: Tensor, old_logp: Tensor, adv: Tensor, valid: Tensor, clip_low: float, clip_high: float
) -> PolicyTerms:
    """GSPO: one ratio per sequence, ``s_i = exp(mean_t (logp - old))`` (length-normalised), clipped per
    sequence. Each token carries ``s_i`` as its value with the gradient of its own log-prob
    (``s_i * exp(logp_t - sg(logp_t))``), so with ``seq-mean-token-mean`` the gradient is GSPO's
    ``s_i A_i mean_t grad logp_t``. GSPO's clip range is far narrower than PPO's (e.g. 3e-4 / 4e-4)."""
    lengths = valid.sum(dim=1, keepdim=True).clamp(min=1).to(logp.dtype)
    seq_log_ratio = ((logp - old_logp) * valid).sum(dim=1, keepdim=True) / lengths
    ratio = torch.exp(logp - logp.detach() + seq_log_ratio.detach())
    return _clipped_surrogate(ratio, adv, clip_low, clip_high)


# name -> objective; `learner.loss` picks one
POLICY_LOSSES = {"ppo_clip": ppo_clip_objective, "gspo": gspo_objective}


def aggregate(per_token: Tensor, valid: Tensor, agg: str, norm_len: int | None = None) -> Tensor:
    """One scalar from per-token losses ``[N, T]`` (0 on padding): ``token-mean`` (every valid token of the
    batch weighs the same), ``seq-mean-token-mean`` (mean over each sequence's tokens, then over the sequences
    with at least one token: eq. 2), ``seq-mean-token-sum-norm`` (each sequence's sum divided by the constant
    ``norm_len``, then the mean over sequences: Dr. GRPO, no length bias)."""
    weights = valid.to(per_token.dtype)
    tokens_per_seq = weights.sum(dim=1)
    if agg == "token-mean":
        return per_token.sum() / tokens_per_seq.sum().clamp(min=1.0)
    n_seqs = (tokens_per_seq > 0).to(per_token.dtype).sum().clamp(min=1.0)
    if agg == "seq-mean-token-sum-norm":
        if norm_len is None:
            raise ValueError("aggregate: agg=seq-mean-token-sum-norm needs norm_len (the constant length)")
        return (per_token.sum(dim=1) / float(norm_len)).sum() / n_seqs
    return (per_token.sum(dim=1) / tokens_per_seq.clamp(min=1.0)).sum() / n_seqs


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    agg: str = "seq-mean-token-mean",
    kl_kind: str = "k3",
    kl_clamp: float | None = None,
    rollout_logp: Tensor | None = None,
    tis_cap: float | None = None,
    loss: str = "ppo_clip",
    clip_eps_low: float | None = None,
    clip_eps_high: float | None = None,
    norm_len: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Eq. 2 as a loss to minimise; returns (scalar loss, metrics).

    logp / old_logp / ref_logp / mask: [N, T] (mask non-zero on hypothesis tokens);
    advantages: [N]. Gradients flow into ``logp`` only. ``ref_logp`` may be None
    when ``beta == 0``. Positions outside the mask never reach the loss (not even
    as NaN). ``loss``: the policy objective (`POLICY_LOSSES`: "ppo_clip", "gspo")
    with the clip range ``[1 - clip_eps_low, 1 + clip_eps_high]`` (each defaults to
    ``clip_eps``). ``agg``: how per-token losses become one number (`aggregate`;
    ``norm_len`` is the constant of "seq-mean-token-sum-norm").

    ``kl_clamp`` (None = unbounded): the per-token KL estimate is clamped to
    ``[-kl_clamp, kl_clamp]`` (a clamped token gets no KL gradient). ``rollout_logp``
    [N, T] + ``tis_cap``: truncated importance sampling, the policy-gradient term
    of each token times ``min(exp(old_logp - rollout_logp), tis_cap)`` (detached).

    Metrics (means over valid tokens): clip_frac (share of tokens where the
    clipped term is active, so their policy-gradient is zero), kl (after the
    clamp), ratio_mean, ratio_max, ratio_min, kl_max (the largest per-token KL
    estimate before the clamp), tis_weight_mean and tis_clip_frac (share of
    tokens whose weight hit the cap; 0 without TIS), plus n_tokens and n_seqs
    (counts that entered the loss). Over no valid token the max/min metrics are
    -inf/+inf (neutral for a max/min over micro-batches).
    """
    clip_low = clip_eps if clip_eps_low is None else clip_eps_low
    clip_high = clip_eps if clip_eps_high is None else clip_eps_high
    _check_inputs(logp, old_logp, ref_logp, advantages, mask)
    _check_options(clip_low, clip_high, beta, agg, kl_kind, loss, ref_logp, norm_len)
    _check_guards(kl_clamp, rollout_logp, tis_cap, logp)
    valid = mask != 0
    dt = torch.promote_types(logp.dtype, torch.float32)  # bf16/fp16 are computed in fp32
    zero = torch.zeros((), dtype=dt, device=logp.device)
    # Sanitize padding first so that garbage there cannot leak NaN into values or grads.
    lp = torch.where(valid, logp.to(dt), zero)
    old = torch.where(valid, old_logp.detach().to(dt), zero)
    adv = advantages.detach().to(dt).unsqueeze(1)

    terms = POLICY_LOSSES[loss](lp, old, adv, valid, clip_low, clip_high)
    objective = terms.objective
    tis = None
    if tis_cap is not None and rollout_logp is not None:  # _check_guards: tis_cap needs rollout_logp
        sampled = torch.where(valid, rollout_logp.detach().to(dt), zero)
        tis = torch.clamp(torch.exp(old - sampled), max=tis_cap)
        objective = objective * tis
    if ref_logp is not None:
        ref = torch.where(valid, ref_logp.detach().to(dt), zero)
        kl_raw = kl_penalty(lp, ref, kl_kind)
    else:
        kl_raw = torch.zeros_like(lp)
    kl = kl_raw if kl_clamp is None else torch.clamp(kl_raw, -kl_clamp, kl_clamp)
    if beta > 0.0:
        objective = objective - beta * kl
    per_token = torch.where(valid, -objective, zero)
    n_tokens = valid.to(dt).sum()
    metrics = _metrics(terms.ratio, terms.clipped, kl, valid, n_tokens)
    metrics.update(_outliers(terms.ratio, kl_raw, tis, tis_cap, valid, n_tokens))
    return aggregate(per_token, valid, agg, norm_len), metrics


def _check_guards(kl_clamp: float | None, rollout_logp: Tensor | None, tis_cap: float | None, logp: Tensor) -> None:
    if kl_clamp is not None and not kl_clamp > 0.0:
        raise ValueError(f"grpo_loss: kl_clamp must be > 0 (or None for no bound), got {kl_clamp}")
    if tis_cap is None:
        return
    if not tis_cap > 0.0:
        raise ValueError(f"grpo_loss: tis_cap must be > 0 (or None for no importance sampling), got {tis_cap}")
    if rollout_logp is None:
        raise ValueError("grpo_loss: tis_cap is set but rollout_logp is None; pass the sampler's log-probs")
    if _shape(rollout_logp) != _shape(logp):
        raise ValueError(f"grpo_loss: rollout_logp has shape {_shape(rollout_logp)}, expected {_shape(logp)} like logp")


@torch.no_grad()
def _metrics(ratio: Tensor, clipped: Tensor, kl: Tensor, valid: Tensor, n_tokens: Tensor) -> dict[str, float]:
    w = valid.to(ratio.dtype)
    denom = n_tokens.clamp(min=1.0)
    clipped = clipped & valid
    return {
        "clip_frac": float(clipped.to(ratio.dtype).sum() / denom),
        "kl": float((kl * w).sum() / denom),
        "ratio_mean": float((ratio * w).sum() / denom),
        "n_tokens": float(n_tokens),
        "n_seqs": float((w.sum(dim=1) > 0).sum()),
    }


def _masked_max(t: Tensor, valid: Tensor) -> float:
    return float(t[valid].max()) if bool(valid.any()) else float("-inf")


def _masked_min(t: Tensor, valid: Tensor) -> float:
    return float(t[valid].min()) if bool(valid.any()) else float("inf")


@torch.no_grad()
def _outliers(
    ratio: Tensor, kl_raw: Tensor, tis: Tensor | None, tis_cap: float | None, valid: Tensor, n_tokens: Tensor
) -> dict[str, float]:
    """Per-token extremes of one loss call (one bad token hides in a mean) and the TIS weights' summary."""
    denom = n_tokens.clamp(min=1.0)
    out = {
        "ratio_max": _masked_max(ratio, valid),
        "ratio_min": _masked_min(ratio, valid),
        "kl_max": _masked_max(kl_raw, valid),
        "tis_weight_mean": 1.0 if bool(valid.any()) else 0.0,
        "tis_clip_frac": 0.0,
    }
    if tis is not None:
        w = valid.to(tis.dtype)
        out["tis_weight_mean"] = float((tis * w).sum() / denom)
        out["tis_clip_frac"] = float(((tis >= tis_cap) & valid).to(tis.dtype).sum() / denom)
    return out


@torch.no_grad()
def logprob_agreement(logp: Tensor, rollout_logp: Tensor, mask: Tensor) -> dict[str, float]:
    """How far the sampler's log-probs of its own tokens are from the learner's, [N, T] each.

    Over valid (mask != 0) tokens: ``diff_sum`` and ``diff_max`` of |rollout_logp - logp|, ``n_tokens``,
    and the range of the per-token importance weight ``exp(logp - rollout_logp)`` (``weight_min``,
    ``weight_max``). Sums and extremes, not means, so micro-batches and ranks combine exactly; over no
    valid token the max/min are -inf/+inf.
    """
    if _shape(logp) != _shape(rollout_logp) or _shape(mask) != _shape(logp):
        raise ValueError(
            f"logprob_agreement: logp {_shape(logp)}, rollout_logp {_shape(rollout_logp)} and "
            f"mask {_shape(mask)} must have one shape"
        )
    valid = mask != 0
    delta = logp.double() - rollout_logp.double()
    weight = torch.exp(delta)
    return {
        "diff_sum": float(delta.abs()[valid].sum()),
        "diff_max": _masked_max(delta.abs(), valid),
        "n_tokens": float(valid.sum()),
        "weight_min": _masked_min(weight, valid),
        "weight_max": _masked_max(weight, valid),
    }
