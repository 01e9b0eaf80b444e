"""GRPO math (docs/design.md#grpo-math, Fun-ASR report eqs. 1-3): hand-computed values and a loop reference."""

from __future__ import annotations

import math

import pytest
import torch

from policy.grpo import (
    ADVANTAGE_ESTIMATORS,
    aggregate,
    compute_advantages,
    group_advantages,
    grpo_loss,
    kl_penalty,
    logprob_agreement,
)

# ---------------------------------------------------------------- advantages (eq. 1)


def test_group_advantages_hand_computed_2x3():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    # row 0: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1 -> (-1, 0, 1) / (1 + 1e-6)
    # row 1: mean 1/3, unbiased std sqrt((1/9 + 1/9 + 4/9) / 2) = 1/sqrt(3) = 0.57735...
    #        -> (-1/3, -1/3, 2/3) / (0.5773502691896258 + 1e-6)
    expected = torch.tensor(
        [
            [-0.9999990000010001, 0.0, 0.9999990000010001],
            [-0.5773492691913577, -0.5773492691913577, 1.1546985383827153],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(group_advantages(rewards), expected, rtol=0, atol=1e-12)


def test_group_advantages_zero_variance_group_is_exactly_zero():
    # 0.1 * 3 / 3 != 0.1 in floating point: the zero must not depend on rounding
    rewards = torch.tensor([[0.1, 0.1, 0.1], [0.7, 0.7, 0.7], [0.0, 1.0, 0.0]])
    adv = group_advantages(rewards)
    assert torch.equal(adv[:2], torch.zeros(2, 3))
    assert adv[2].abs().sum() > 0


def test_group_advantages_single_hypothesis_groups_are_zero():
    adv = group_advantages(torch.tensor([[0.3], [5.0]]))
    assert torch.equal(adv, torch.zeros(2, 1))


def test_group_advantages_rejects_wrong_rank_and_nonfinite():
    with pytest.raises(ValueError, match=r"\(6,\)"):
        group_advantages(torch.zeros(6))
    with pytest.raises(ValueError, match="NaN or inf"):
        group_advantages(torch.tensor([[1.0, float("nan")]]))


# ---------------------------------------------------------------- KL estimators


def test_kl_penalty_each_kind_hand_computed():
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    # k1 = logp - ref
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([[0.5, -1.0]], dtype=torch.float64))
    # k2 = 0.5 (logp - ref)^2
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([[0.125, 0.5]], dtype=torch.float64))
    # k3 with x = ref - logp = (-0.5, 1): e^-0.5 + 0.5 - 1 = 0.10653065971263342, e - 2 = 0.7182818284590451
    expected_k3 = torch.tensor([[0.10653065971263342, 0.7182818284590451]], dtype=torch.float64)
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), expected_k3)
    torch.testing.assert_close(kl_penalty(logp, ref), expected_k3)  # k3 is the default


def test_kl_penalty_unknown_kind_lists_the_kinds():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 2), "k4")


def test_kl_penalty_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(1, 2\).*\(1, 3\)"):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 3))


# ---------------------------------------------------------------- the loss (eq. 2)
# Two sequences, T = 3, clip_eps = 0.2, old_logp = 0 so ratio = exp(logp):
#   seq 0, A = +1: ratios 1.5 (clipped: min(1.5, 1.2) = 1.2), 1.0, 0.5 (min(0.5, 0.8) = 0.5, unclipped)
#   seq 1, A = -2: ratios 0.5 (clipped: min(-1.0, -1.6) = -1.6), 1.1 (-2.2), then one padding token
# per-token objective: seq 0 = (1.2, 1.0, 0.5) -> mean 0.9; seq 1 = (-1.6, -2.2) -> mean -1.9
RATIOS = [[1.5, 1.0, 0.5], [0.5, 1.1, 1.0]]


def _case(padding_value: float = float("nan")):
    logp = torch.log(torch.tensor(RATIOS, dtype=torch.float64))
    logp[1, 2] = padding_value  # garbage on padding must not leak
    old = torch.zeros(2, 3, dtype=torch.float64)
    old[1, 2] = float("inf")
    ref = torch.zeros(2, 3, dtype=torch.float64)  # reference = old policy
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logp.requires_grad_(True), old, ref, adv, mask


def test_grpo_loss_seq_mean_token_mean_with_clipping_and_padding():
    logp, old, ref, adv, mask = _case()
    loss, m = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=0.0)
    # L = -(0.9 + (-1.9)) / 2 = 0.5
    assert loss.item() == pytest.approx(0.5, abs=1e-6)
    assert m["clip_frac"] == pytest.approx(2 / 5)  # tokens (0,0) and (1,0)
    assert m["ratio_mean"] == pytest.approx((1.5 + 1.0 + 0.5 + 0.5 + 1.1) / 5)  # 0.92
    assert m["n_tokens"] == 5 and m["n_seqs"] == 2


def test_grpo_loss_token_mean_hand_computed():
    logp, old, ref, adv, mask = _case()
    loss, _ = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=0.0, agg="token-mean")
    # L = -(1.2 + 1.0 + 0.5 - 1.6 - 2.2) / 5 = -(-1.1) / 5 = 0.22
    assert loss.item() == pytest.approx(0.22, abs=1e-6)


def test_grpo_loss_kl_term_hand_computed_both_aggregations():
    logp, old, ref, adv, mask = _case()
    # k3 with ref = 0: x = -log r, KL = 1/r + log r - 1 per token
    k = {r: 1 / r + math.log(r) - 1 for r in (1.5, 1.0, 0.5, 1.1)}
    kl0 = [k[1.5], k[1.0], k[0.5]]  # 0.0721318, 0, 0.3068528
    kl1 = [k[0.5], k[1.1]]  # 0.3068528, 0.0044010
    beta = 0.04
    seq0 = (1.2 + 1.0 + 0.5 - beta * sum(kl0)) / 3
    seq1 = (-1.6 - 2.2 - beta * sum(kl1)) / 2
    loss, m = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=beta)
    assert loss.item() == pytest.approx(-(seq0 + seq1) / 2, abs=1e-9)
    assert m["kl"] == pytest.approx((sum(kl0) + sum(kl1)) / 5, abs=1e-9)
    loss_t, _ = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=beta, agg="token-mean")
    total = 1.2 + 1.0 + 0.5 - 1.6 - 2.2 - beta * (sum(kl0) + sum(kl1))
    assert loss_t.item() == pytest.approx(-total / 5, abs=1e-9)
    loss_k1, m1 = grpo_loss(logp, old, ref, adv, mask, beta=beta, kl_kind="k1")
    kl1_tokens = [math.log(1.5), 0.0, math.log(0.5), math.log(0.5), math.log(1.1)]  # logp - 0
    assert m1["kl"] == pytest.approx(sum(kl1_tokens) / 5, abs=1e-9)
    assert loss_k1.item() != pytest.approx(loss.item())


def test_grpo_loss_gradient_zero_on_clipped_tokens_nonzero_elsewhere():
    logp, old, ref, adv, mask = _case()
    loss, _ = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=0.0)
    loss.backward()
    g = logp.grad
    # dL/dlogp = -(1/2)(1/|o_i|) * ratio * A on unclipped tokens; 0 on clipped tokens and padding
    expected = torch.tensor([[0.0, -1 / 6, -1 / 12], [0.0, 0.55, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(g, expected, rtol=0, atol=1e-12)
    assert g[0, 0].item() == 0.0 and g[1, 0].item() == 0.0 and g[1, 2].item() == 0.0
    assert torch.isfinite(g).all()


def test_grpo_loss_clipped_token_gradient_is_only_the_kl_gradient():
    logp, old, ref, adv, mask = _case()
    loss, _ = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=0.04)
    loss.backward()
    # clipped token (0, 0): d/dlogp of (1/2)(1/3) * beta * (e^{-logp} + logp - 1) = (beta/6)(1 - 1/1.5)
    assert logp.grad[0, 0].item() == pytest.approx(0.04 / 6 * (1 - 1 / 1.5), abs=1e-12)


def test_grpo_loss_empty_sequences_do_not_produce_nan():
    logp = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    args = (logp.detach() + 0.1, torch.zeros(3, 4), torch.tensor([1.0, 2.0, -1.0]))
    loss, m = grpo_loss(logp, args[0], args[1], args[2], mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert m["n_seqs"] == 2 and m["n_tokens"] == 3
    # the empty row does not count: same loss as without it
    keep = torch.tensor([0, 2])
    loss2, _ = grpo_loss(logp.detach()[keep], args[0][keep], args[1][keep], args[2][keep], mask[keep])
    assert loss.item() == pytest.approx(loss2.item(), abs=1e-7)
    # nothing valid at all: loss 0, finite means, neutral extremes (-inf max, +inf min), backward still works
    lp = torch.randn(2, 3, requires_grad=True)
    loss0, m0 = grpo_loss(lp, torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2), torch.zeros(2, 3))
    loss0.backward()
    extremes = {"ratio_max": -math.inf, "kl_max": -math.inf, "ratio_min": math.inf}
    assert loss0.item() == 0.0 and all(math.isfinite(v) for k, v in m0.items() if k not in extremes)
    assert {k: m0[k] for k in extremes} == extremes
    assert torch.equal(lp.grad, torch.zeros(2, 3))


def _loop_reference(logp, old, ref, adv, mask, clip_eps, beta, agg):
    """Eq. 2 written out token by token with the math module."""
    seq_means, token_terms = [], []
    for i in range(len(logp)):
        terms = []
        for t in range(len(logp[i])):
            if not mask[i][t]:
                continue
            rho = math.exp(logp[i][t] - old[i][t])
            clipped = min(max(rho, 1 - clip_eps), 1 + clip_eps)
            x = ref[i][t] - logp[i][t]
            kl = math.exp(x) - x - 1
            terms.append(min(rho * adv[i], clipped * adv[i]) - beta * kl)
        token_terms += terms
        if terms:
            seq_means.append(sum(terms) / len(terms))
    if agg == "token-mean":
        return -sum(token_terms) / len(token_terms)
    return -sum(seq_means) / len(seq_means)


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean"])
def test_grpo_loss_matches_per_sequence_loop(agg):
    gen = torch.Generator().manual_seed(0)
    N, T = 6, 9
    logp = -torch.rand(N, T, generator=gen, dtype=torch.float64) * 3
    old = logp + 0.4 * torch.randn(N, T, generator=gen, dtype=torch.float64)
    ref = logp + 0.4 * torch.randn(N, T, generator=gen, dtype=torch.float64)
    adv = torch.randn(N, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([9, 1, 5, 0, 7, 3])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    loss, m = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=0.1, agg=agg)
    expected = _loop_reference(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.1, agg)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert 0.0 < m["clip_frac"] < 1.0  # the random case does exercise clipping


def test_grpo_loss_shape_errors_name_the_shapes():
    logp = torch.zeros(2, 3)
    ok = dict(old_logp=torch.zeros(2, 3), ref_logp=torch.zeros(2, 3), advantages=torch.zeros(2), mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"logp must be \[N, T\].*\(6,\)"):
        grpo_loss(torch.zeros(6), **ok)
    for key, bad in [("old_logp", torch.zeros(2, 4)), ("ref_logp", torch.zeros(3, 3)), ("mask", torch.ones(2, 3, 1))]:
        with pytest.raises(ValueError, match=rf"{key} has shape \({', '.join(map(str, bad.shape))}\)"):
            grpo_loss(logp, **{**ok, key: bad})
    with pytest.raises(ValueError, match=r"advantages must be \[N\].*\(2, 1\)"):
        grpo_loss(logp, **{**ok, "advantages": torch.zeros(2, 1)})


def test_grpo_loss_rejects_bad_options():
    args = (torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1), torch.ones(1, 2))
    with pytest.raises(ValueError, match="seq-mean-token-mean, token-mean"):
        grpo_loss(*args, agg="sum")
    with pytest.raises(ValueError, match="k1, k2, k3"):
        grpo_loss(*args, kl_kind="k5")
    with pytest.raises(ValueError, match="clip_eps"):
        grpo_loss(*args, clip_eps=1.5)
    with pytest.raises(ValueError, match="ref_logp is None"):
        grpo_loss(args[0], args[1], None, args[3], args[4], beta=0.04)
    loss, _ = grpo_loss(args[0], args[1], None, args[3], args[4], beta=0.0)  # allowed without KL
    assert loss.item() == 0.0


def test_grpo_loss_bf16_inputs_are_computed_in_fp32():
    logp32, old, ref, adv, mask = _case()
    logp = logp32.detach().to(torch.bfloat16).requires_grad_(True)
    loss, _ = grpo_loss(logp, old.to(torch.bfloat16), ref.to(torch.bfloat16), adv.to(torch.bfloat16), mask, beta=0.0)
    loss.backward()
    assert loss.dtype == torch.float32 and logp.grad.dtype == torch.bfloat16
    assert loss.item() == pytest.approx(0.5, abs=1e-2)  # bf16 rounding of log(1.5) etc.


# ---- truncated importance sampling, the KL bound, sampler agreement (hand-computed) -------------------


def test_tis_weights_the_policy_gradient_by_the_capped_sampler_ratio():
    logp = torch.tensor([[0.0, -1.0]], requires_grad=True)
    old = logp.detach().clone()  # ratio 1: the clip is not active
    rollout = torch.tensor([[0.5, -2.0]])  # raw weights exp(-0.5) = 0.6065, exp(1) = 2.718 -> cap 2
    adv, mask = torch.tensor([1.5]), torch.ones(1, 2)
    loss, m = grpo_loss(logp, old, None, adv, mask, beta=0.0, rollout_logp=rollout, tis_cap=2.0)
    w = [math.exp(-0.5), 2.0]
    assert loss.item() == pytest.approx(-1.5 * (w[0] + w[1]) / 2, abs=1e-6)
    loss.backward()  # d/dlogp of -(rho * A * w) / 2 at rho = 1
    assert logp.grad[0].tolist() == pytest.approx([-0.75 * w[0], -0.75 * w[1]], abs=1e-6)
    assert m["tis_weight_mean"] == pytest.approx((w[0] + w[1]) / 2, abs=1e-6)
    assert m["tis_clip_frac"] == pytest.approx(0.5)
    plain, m0 = grpo_loss(logp.detach(), old, None, adv, mask, beta=0.0)  # off by default
    assert plain.item() == pytest.approx(-1.5) and m0["tis_weight_mean"] == 1.0 and m0["tis_clip_frac"] == 0.0


def test_tis_does_not_weight_the_kl_term():
    logp = torch.tensor([[-0.5]], requires_grad=True)
    ref, rollout = torch.tensor([[-1.0]]), torch.tensor([[-3.0]])  # weight exp(2.5) capped at 3
    loss, _ = grpo_loss(
        logp, logp.detach(), ref, torch.zeros(1), torch.ones(1, 1), beta=0.1, rollout_logp=rollout, tis_cap=3.0
    )
    k3 = math.exp(-0.5) + 0.5 - 1.0  # advantage 0: only the KL term is left, unweighted
    assert loss.item() == pytest.approx(0.1 * k3, abs=1e-7)


def test_kl_clamp_bounds_each_token_and_stops_its_gradient():
    logp = torch.tensor([[-20.0, -0.5]], requires_grad=True)
    ref = torch.tensor([[0.0, -1.0]])
    k3 = [math.exp(20.0) - 21.0, math.exp(-0.5) + 0.5 - 1.0]
    loss, m = grpo_loss(logp, logp.detach(), ref, torch.zeros(1), torch.ones(1, 2), beta=0.04, kl_clamp=10.0)
    assert loss.item() == pytest.approx(0.04 * (10.0 + k3[1]) / 2, rel=1e-6)
    assert m["kl"] == pytest.approx((10.0 + k3[1]) / 2, rel=1e-6)
    assert m["kl_max"] == pytest.approx(k3[0], rel=1e-6)  # the outlier is still reported
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([0.0, 0.04 * (1 - math.exp(-0.5)) / 2], abs=1e-9)
    unbounded, _ = grpo_loss(logp.detach(), logp.detach(), ref, torch.zeros(1), torch.ones(1, 2), beta=0.04)
    assert unbounded.item() == pytest.approx(0.04 * (k3[0] + k3[1]) / 2, rel=1e-6)


def test_outlier_metrics_are_per_token_extremes_over_valid_tokens():
    logp = torch.tensor([[0.0, -1.0, 9.0], [-0.2, 0.0, 0.0]])
    old = torch.tensor([[0.1, -1.5, 0.0], [0.0, 0.0, 0.0]])
    ref = torch.tensor([[0.0, -1.0, 0.0], [0.3, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])  # the 9.0 is padding: never an extreme
    _, m = grpo_loss(logp, old, ref, torch.ones(2), mask, beta=0.04)
    assert m["ratio_max"] == pytest.approx(math.exp(0.5)) and m["ratio_min"] == pytest.approx(math.exp(-0.2))
    assert m["kl_max"] == pytest.approx(math.exp(0.5) - 0.5 - 1.0)


def test_logprob_agreement_hand_computed():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    rollout = torch.tensor([[-1.5, -2.0, 5.0], [-0.25, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    a = logprob_agreement(logp, rollout, mask)
    assert a["n_tokens"] == 3 and a["diff_sum"] == pytest.approx(0.75) and a["diff_max"] == pytest.approx(0.5)
    assert a["weight_max"] == pytest.approx(math.exp(0.5)) and a["weight_min"] == pytest.approx(math.exp(-0.25))
    empty = logprob_agreement(logp, rollout, torch.zeros(2, 3))
    assert empty["n_tokens"] == 0 and empty["diff_max"] == -math.inf and empty["weight_min"] == math.inf


def test_guards_reject_bad_options():
    args = (torch.zeros(1, 2), torch.zeros(1, 2), None, torch.ones(1), torch.ones(1, 2))
    with pytest.raises(ValueError, match="rollout_logp is None"):
        grpo_loss(*args, beta=0.0, tis_cap=2.0)
    with pytest.raises(ValueError, match="tis_cap must be > 0"):
        grpo_loss(*args, beta=0.0, tis_cap=0.0, rollout_logp=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="kl_clamp must be > 0"):
        grpo_loss(*args, beta=0.0, kl_clamp=-1.0)
    with pytest.raises(ValueError, match="rollout_logp has shape"):
        grpo_loss(*args, beta=0.0, tis_cap=2.0, rollout_logp=torch.zeros(2, 2))


# ---- the registries: advantage estimators, policy losses, aggregation (hand-computed) ---------------------


def test_advantage_estimators_hand_computed():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
    std = math.sqrt(((1 - 3) ** 2 + 1 + 0 + 9) / 3)  # unbiased std of the first group: sqrt(14 / 3)
    assert compute_advantages(r, "grpo")[0].tolist() == pytest.approx([-2 / std, -1 / std, 0.0, 3 / std], abs=1e-5)
    assert compute_advantages(r, "dr_grpo")[0].tolist() == pytest.approx([-2.0, -1.0, 0.0, 3.0])
    # leave-one-out: 1 - (2 + 3 + 6) / 3, 2 - (1 + 3 + 6) / 3, 3 - (1 + 2 + 6) / 3, 6 - (1 + 2 + 3) / 3
    assert compute_advantages(r, "rloo")[0].tolist() == pytest.approx([-8 / 3, -4 / 3, 0.0, 4.0], abs=1e-6)
    for name in ADVANTAGE_ESTIMATORS:  # a flat group and a group of one carry no signal
        assert compute_advantages(r, name)[1].tolist() == [0.0] * 4
        assert compute_advantages(torch.tensor([[2.0]]), name).tolist() == [[0.0]]
    with pytest.raises(ValueError, match="grpo, dr_grpo, rloo"):
        compute_advantages(r, "ppo")
    with pytest.raises(ValueError, match="NaN"):
        compute_advantages(torch.tensor([[1.0, float("nan")]]), "rloo")


def test_every_estimator_gives_exactly_zero_to_a_flat_group_whose_mean_rounds():
    # 0.1 is not exact in float32: mean(0.1 x 7) - 0.1 is ~1e-8, not 0, unless flat groups are zeroed
    r = torch.full((1, 7), 0.1)
    assert float((r - r.mean(dim=1, keepdim=True)).abs().max()) > 0  # the rounding this pins
    for name in ADVANTAGE_ESTIMATORS:
        assert compute_advantages(r, name).tolist() == [[0.0] * 7], name


def test_rloo_equals_the_leave_one_out_loop():
    r = torch.rand(5, 6, generator=torch.Generator().manual_seed(0))
    want = [[float(r[b, i] - (r[b].sum() - r[b, i]) / 5) for i in range(6)] for b in range(5)]
    assert compute_advantages(r, "rloo").tolist() == [pytest.approx(row, abs=1e-6) for row in want]


def test_clip_higher_lets_a_likely_token_grow_past_the_symmetric_bound():
    old = torch.zeros(1, 2)
    logp = torch.tensor([[math.log(1.25), math.log(0.7)]], requires_grad=True)
    adv, mask = torch.ones(1), torch.ones(1, 2)
    loss, m = grpo_loss(logp, old, None, adv, mask, beta=0.0, clip_eps_low=0.2, clip_eps_high=0.28)
    assert loss.item() == pytest.approx(-(1.25 + 0.7) / 2, abs=1e-6) and m["clip_frac"] == 0.0
    loss.backward()  # d/dlogp of -(rho A) / 2 = -rho / 2 on both tokens
    assert logp.grad[0].tolist() == pytest.approx([-1.25 / 2, -0.7 / 2], abs=1e-6)
    logp.grad = None
    sym, m_sym = grpo_loss(logp, old, None, adv, mask, beta=0.0, clip_eps=0.2)  # 1.25 clipped at 1.2
    assert sym.item() == pytest.approx(-(1.2 + 0.7) / 2, abs=1e-6) and m_sym["clip_frac"] == 0.5
    sym.backward()
    assert logp.grad[0].tolist() == pytest.approx([0.0, -0.7 / 2], abs=1e-6)


def test_gspo_uses_one_length_normalised_ratio_per_sequence_and_its_gradient():
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.1, -0.3, 0.0], [0.05, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([1.0, -2.0])
    loss, m = grpo_loss(logp, old, None, adv, mask, beta=0.0, loss="gspo")
    s = [math.exp((0.1 - 0.3) / 2), math.exp(0.05)]  # sequence ratios, inside [0.8, 1.2]
    assert loss.item() == pytest.approx(-(s[0] * 1.0 + s[1] * -2.0) / 2, abs=1e-6)
    assert m["ratio_max"] == pytest.approx(s[1]) and m["ratio_min"] == pytest.approx(s[0])
    loss.backward()
    # GSPO's gradient: d/dlogp of -(1/2) sum_i s_i A_i with s_i = exp(mean over seq i of (logp - old))
    direct = logp.detach().clone().requires_grad_(True)
    seq = torch.stack([torch.exp(direct[0, :2].mean()), torch.exp(direct[1, :1].mean())])
    (-(seq * adv).sum() / 2).backward()
    assert logp.grad.tolist() == [pytest.approx(row, abs=1e-6) for row in direct.grad.tolist()]
    assert logp.grad[0, 0].item() == pytest.approx(-s[0] / 2 / 2, abs=1e-6)  # s A / |y| / n_seqs


def test_gspo_clips_the_whole_sequence():
    logp = torch.tensor([[1.0, 1.0]], requires_grad=True)  # sequence ratio e > 1 + 0.2
    loss, m = grpo_loss(logp, torch.zeros(1, 2), None, torch.ones(1), torch.ones(1, 2), beta=0.0, loss="gspo")
    assert loss.item() == pytest.approx(-1.2, abs=1e-6) and m["clip_frac"] == 1.0
    loss.backward()
    assert logp.grad.tolist() == [[0.0, 0.0]]


def test_aggregation_modes_hand_computed():
    per_token = torch.tensor([[1.0, 2.0, 9.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    valid = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]]) != 0  # the third sequence is empty
    assert aggregate(per_token * valid, valid, "token-mean").item() == pytest.approx(6 / 3)
    assert aggregate(per_token * valid, valid, "seq-mean-token-mean").item() == pytest.approx((1.5 + 3) / 2)
    assert aggregate(per_token * valid, valid, "seq-mean-token-sum-norm", norm_len=4).item() == pytest.approx(
        (3 / 4 + 3 / 4) / 2
    )


def test_dr_grpo_aggregation_has_no_length_bias_in_the_gradient():
    logp = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    loss, _ = grpo_loss(
        logp,
        torch.zeros(2, 4),
        None,
        torch.tensor([1.0, 1.0]),
        mask,
        beta=0.0,
        agg="seq-mean-token-sum-norm",
        norm_len=8,
    )
    loss.backward()  # every token of either sequence: -A / (norm_len * n_seqs)
    assert logp.grad.tolist() == [[-1 / 16] * 4, [-1 / 16, 0.0, 0.0, 0.0]]
    logp.grad = None
    grpo_loss(logp, torch.zeros(2, 4), None, torch.tensor([1.0, 1.0]), mask, beta=0.0)[0].backward()
    assert logp.grad[0, 0].item() == pytest.approx(-1 / 8) and logp.grad[1, 0].item() == pytest.approx(-1 / 2)
    with pytest.raises(ValueError, match="norm_len"):
        grpo_loss(logp, torch.zeros(2, 4), None, torch.ones(2), mask, beta=0.0, agg="seq-mean-token-sum-norm")


def test_unknown_loss_names_the_registry():
    with pytest.raises(ValueError, match="ppo_clip, gspo"):
        grpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), None, torch.ones(1), torch.ones(1, 1), beta=0.0, loss="dpo")
