"""GRPO math of the Fun-ASR technical report (eqs. 1-3), as pure tensor functions.

DESIGN.md §2 is the contract:

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

import torch
from torch import Tensor

KL_KINDS = ("k1", "k2", "k3")
AGG_MODES = ("seq-mean-token-mean", "token-mean")


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def group_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """Eq. 1: rewards [B, G] -> advantages [B, G], normalised within each group (row).

    A group whose rewards are all equal (and every group of size G = 1) gets
    advantages of exactly 0. Non-finite rewards raise ValueError.
    """
    if rewards.dim() != 2:
        raise ValueError(f"group_advantages: rewards must be [B, G], got shape {_shape(rewards)}")
    if eps < 0:
        raise ValueError(f"group_advantages: eps must be >= 0, got {eps}")
    r = rewards.detach()
    if not r.is_floating_point():
        r = r.to(torch.float32)
    if r.numel() and not bool(torch.isfinite(r).all()):
        raise ValueError(f"group_advantages: rewards contain NaN or inf: {r.tolist()}")
    if r.shape[1] < 2:
        return torch.zeros_like(r)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True)                   # unbiased (torch default)
    adv = (r - mean) / (std + eps)
    constant = (r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True))
    return torch.where(constant, torch.zeros_like(adv), adv)


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token KL estimate between the policy and the reference, [N, T] -> [N, T].

    k1 = logp - ref;  k2 = 0.5 (logp - ref)^2;  k3 = exp(ref - logp) - (ref - logp) - 1.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kl_penalty: unknown kind {kind!r}; choose one of {', '.join(KL_KINDS)}")
    if _shape(logp) != _shape(ref_logp):
        raise ValueError(
            f"kl_penalty: logp has shape {_shape(logp)} but ref_logp has shape {_shape(ref_logp)}")
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


def _check_inputs(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None,
                  advantages: Tensor, mask: Tensor) -> None:
    if logp.dim() != 2:
        raise ValueError(f"grpo_loss: logp must be [N, T], got shape {_shape(logp)}")
    named = {"old_logp": old_logp, "mask": mask}
    if ref_logp is not None:
        named["ref_logp"] = ref_logp
    for name, t in named.items():
        if _shape(t) != _shape(logp):
            raise ValueError(
                f"grpo_loss: {name} has shape {_shape(t)}, expected {_shape(logp)} like logp")
    if _shape(advantages) != (logp.shape[0],):
        raise ValueError(
            f"grpo_loss: advantages must be [N] = ({logp.shape[0]},) for logp of shape "
            f"{_shape(logp)}, got shape {_shape(advantages)}")


def _check_options(clip_eps: float, beta: float, agg: str, kl_kind: str,
                   ref_logp: Tensor | None) -> None:
    if agg not in AGG_MODES:
        raise ValueError(f"grpo_loss: unknown agg {agg!r}; choose one of {', '.join(AGG_MODES)}")
    if kl_kind not in KL_KINDS:
        raise ValueError(f"grpo_loss: unknown kl_kind {kl_kind!r}; choose one of {', '.join(KL_KINDS)}")
    if not 0.0 < clip_eps < 1.0:
        raise ValueError(f"grpo_loss: clip_eps must be in (0, 1), got {clip_eps}")
    if beta < 0.0:
        raise ValueError(f"grpo_loss: beta must be >= 0, got {beta}")
    if ref_logp is None and beta > 0.0:
        raise ValueError("grpo_loss: ref_logp is None but beta > 0; pass the reference log-probs")


def grpo_loss(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None, advantages: Tensor,
              mask: Tensor, clip_eps: float = 0.2, beta: float = 0.04,
              agg: str = "seq-mean-token-mean",
              kl_kind: str = "k3", kl_clamp: float | None = None, rollout_logp: Tensor | None = None,
              tis_cap: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """Eq. 2 as a loss to minimise; returns (scalar loss, metrics).

    logp / old_logp / ref_logp / mask: [N, T] (mask non-zero on hypothesis tokens);
    advantages: [N]. Gradients flow into ``logp`` only. ``ref_logp`` may be None
    when ``beta == 0``. Positions outside the mask never reach the loss (not even
    as NaN). ``agg``: "seq-mean-token-mean" (eq. 2: mean over each sequence's
    tokens, then over the sequences that have at least one token) or
    "token-mean" (every valid token of the batch weighted equally).

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
    _check_inputs(logp, old_logp, ref_logp, advantages, mask)
    _check_options(clip_eps, beta, agg, kl_kind, ref_logp)
    _check_guards(kl_clamp, rollout_logp, tis_cap, logp)
    valid = mask != 0
    dt = torch.promote_types(logp.dtype, torch.float32)     # bf16/fp16 are computed in fp32
    zero = torch.zeros((), dtype=dt, device=logp.device)
    # Sanitize padding first so that garbage there cannot leak NaN into values or grads.
    lp = torch.where(valid, logp.to(dt), zero)
    old = torch.where(valid, old_logp.detach().to(dt), zero)
    adv = advantages.detach().to(dt).unsqueeze(1)

    ratio = torch.exp(lp - old)
    surr = ratio * adv
    surr_clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    objective = torch.minimum(surr, surr_clipped)
    tis = None
    if tis_cap is not None:
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

    weights = valid.to(dt)
    tokens_per_seq = weights.sum(dim=1)
    n_tokens = tokens_per_seq.sum()
    if agg == "token-mean":
        loss = per_token.sum() / n_tokens.clamp(min=1.0)
    else:
        seq_loss = per_token.sum(dim=1) / tokens_per_seq.clamp(min=1.0)
        n_seqs_nonempty = (tokens_per_seq > 0).to(dt).sum()
        loss = seq_loss.sum() / n_seqs_nonempty.clamp(min=1.0)
    metrics = _metrics(ratio, surr, surr_clipped, kl, valid, n_tokens)
    metrics.update(_outliers(ratio, kl_raw, tis, tis_cap, valid, n_tokens))
    return loss, metrics


def _check_guards(kl_clamp: float | None, rollout_logp: Tensor | None, tis_cap: float | None,
                  logp: Tensor) -> None:
    if kl_clamp is not None and not kl_clamp > 0.0:
        raise ValueError(f"grpo_loss: kl_clamp must be > 0 (or None for no bound), got {kl_clamp}")
    if tis_cap is None:
        return
    if not tis_cap > 0.0:
        raise ValueError(f"grpo_loss: tis_cap must be > 0 (or None for no importance sampling), got {tis_cap}")
    if rollout_logp is None:
        raise ValueError("grpo_loss: tis_cap is set but rollout_logp is None; pass the sampler's log-probs")
    if _shape(rollout_logp) != _shape(logp):
        raise ValueError(f"grpo_loss: rollout_logp has shape {_shape(rollout_logp)}, expected {_shape(logp)} "
                         "like logp")


@torch.no_grad()
def _metrics(ratio: Tensor, surr: Tensor, surr_clipped: Tensor, kl: Tensor,
             valid: Tensor, n_tokens: Tensor) -> dict[str, float]:
    w = valid.to(ratio.dtype)
    denom = n_tokens.clamp(min=1.0)
    clipped = (surr_clipped < surr) & valid
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
def _outliers(ratio: Tensor, kl_raw: Tensor, tis: Tensor | None, tis_cap: float | None, valid: Tensor,
              n_tokens: Tensor) -> dict[str, float]:
    """Per-token extremes of one loss call (one bad token hides in a mean) and the TIS weights' summary."""
    denom = n_tokens.clamp(min=1.0)
    out = {"ratio_max": _masked_max(ratio, valid), "ratio_min": _masked_min(ratio, valid),
           "kl_max": _masked_max(kl_raw, valid), "tis_weight_mean": 1.0 if bool(valid.any()) else 0.0,
           "tis_clip_frac": 0.0}
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
        raise ValueError(f"logprob_agreement: logp {_shape(logp)}, rollout_logp {_shape(rollout_logp)} and "
                         f"mask {_shape(mask)} must have one shape")
    valid = mask != 0
    delta = logp.double() - rollout_logp.double()
    weight = torch.exp(delta)
    return {"diff_sum": float(delta.abs()[valid].sum()), "diff_max": _masked_max(delta.abs(), valid),
            "n_tokens": float(valid.sum()), "weight_min": _masked_min(weight, valid),
            "weight_max": _masked_max(weight, valid)}
