"""policy.learner without Ray: 2 FSDP2 ranks as torch.multiprocessing processes (gloo, fp32) against a plain
single-process GRPO reference (no FSDP, one big batch), LoRA, micro-batching equivalence, the NaN guard."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from learner_ranks import (
    audio_batch,
    audio_prompts,
    learner_cfg,
    make_batch,
    ports_for_later,
    rank_main,
    reference_run,
    rows,
    run_ranks,
    with_agg,
    write_waves,
)
from tolerances import update_error

from policy.distributed import rank_micro_batches
from policy.learner_batch import flatten_batch, mini_batch_rows
from policy.learner_state import lr_multiplier
from policy.models import load_audio_llm

WORLD = 2
AGGS = ("token-mean", "seq-mean-token-mean")


# GSPO's sequence ratio with a narrow asymmetric clip, Dr. GRPO's constant normaliser, two epochs
GSPO_DR = learner_cfg(loss="gspo", clip_eps_low=3e-4, clip_eps_high=4e-4, agg="seq-mean-token-sum-norm")


def _scenarios(waves: list[str]) -> dict:
    b1, b2 = make_batch(1), make_batch(2)
    a1, a2 = audio_batch(1, waves), audio_batch(2, waves)
    scen = {
        "encoder": {"cfg": learner_cfg(), "batches": [a1, a2], "train_encoder": True, "frontend": True},
        "encoder_lora": {
            "cfg": learner_cfg(finetune="lora"),
            "batches": [a1, a2],
            "train_encoder": True,
            "frontend": True,
            "ref_logprobs": True,
        },
        "full": {"cfg": learner_cfg(), "batches": [b1, b2]},
        "no_reference": {"cfg": learner_cfg(beta=0.0), "batches": [b1, b2], "no_reference": True},
        "full_unshared": {"cfg": learner_cfg(share_prompts=False), "batches": [b1, b2]},
        "temperature": {"cfg": learner_cfg(), "batches": [b1], "temperature": 0.7, "ref_logprobs": True},
        "lora": {
            "cfg": learner_cfg(finetune="lora"),
            "batches": [b1, b2],
            "state_before": True,
            "state_after": True,
            "ref_logprobs": True,
        },
        "mini2": {"cfg": learner_cfg(ppo_epochs=1, mini_batches=2, lr=3e-3), "batches": [b1, b2]},
        "tis": {"cfg": learner_cfg(ppo_epochs=1, tis_cap=2.0), "batches": [make_batch(1, sampled=True)]},
        "gspo_dr": {"cfg": GSPO_DR, "batches": [b1, b2], "max_new_tokens": 8},
        "nan_adv": {"cfg": learner_cfg(), "batches": [make_batch(1, nan_adv=True), b1], "expect_error": True},
        "nan_loss": {"cfg": learner_cfg(), "batches": [make_batch(1, nan_prompt=True), b1], "expect_error": True},
    }
    for agg in AGGS:
        for mb in (2, 8):
            scen[f"{agg}/{mb}"] = {"cfg": with_agg(learner_cfg(ppo_epochs=1), agg, mb), "batches": [b1]}
    return scen


@pytest.fixture(scope="module")
def waves(tmp_path_factory) -> list[str]:
    return write_waves(tmp_path_factory.mktemp("learner_audio"))


@pytest.fixture(scope="module")
def ranks(tiny_model_dir, waves) -> dict:
    """Run every scenario once on 2 ranks (one spawn for the module); rank 0's results by scenario."""
    scenarios = _scenarios(waves)
    ports = ports_for_later(len(scenarios))
    results = run_ranks(rank_main, WORLD, (ports, str(tiny_model_dir), scenarios), timeout_s=240)
    assert "__error__" not in results, results["__error__"]
    return results


@pytest.fixture(scope="module")
def start(tiny_model_dir) -> dict:
    """The starting weights: LLM under sync names, frontend under its own (what the updates are measured from)."""
    model = load_audio_llm(tiny_model_dir)
    return {
        **{k: v.detach().clone() for k, v in model.llm_state_dict()},
        **{k: v.detach().clone() for k, v in model.frontend.named_parameters()},
    }


def _close(got: dict, want: dict, start: dict) -> float:
    """Weights after the same updates, compared as updates (tests/conftest.py: how tolerances are chosen)."""
    assert got.keys() == want.keys()
    ratios = {k: update_error(got[k], want[k], start[k]) for k in want}
    worst = max(ratios, key=ratios.get)
    assert ratios[worst] <= 1.0, f"{worst}: |got - want| is {ratios[worst]:.3g} x the bound"
    return ratios[worst]


@pytest.mark.slow
def test_two_fsdp_ranks_match_single_process_reference_losses_and_weights(ranks, tiny_model_dir, start):
    cfg = learner_cfg()
    (losses, norms), weights = reference_run(tiny_model_dir, cfg, [make_batch(1), make_batch(2)])
    got = ranks["full"]
    assert [s.num_sequences for s in got["stats"]] == [9, 9]
    np.testing.assert_allclose([s.loss for s in got["stats"]], losses, rtol=0, atol=1e-5)
    np.testing.assert_allclose([s.grad_norm for s in got["stats"]], norms, rtol=1e-5)
    assert min(norms) > cfg.grad_clip  # clipping was active (the norm is global over the shards)
    _close(got["weights"], weights, start)
    start = dict(load_audio_llm(tiny_model_dir).llm_state_dict())
    moved = max(float(np.abs(got["weights"][k] - start[k].numpy()).max()) for k in start)
    assert moved > 1e-4  # the updates did something the comparison can see
    s = got["stats"][1]
    assert s.lr == pytest.approx(1e-4) and s.grad_norm > 0 and math.isfinite(s.kl) and s.kl > 0
    assert 0 <= s.clip_frac <= 1 and s.extra["micro_batches"] == 3  # 5 rows on rank 0 in pairs
    assert s.extra["optimizer_steps"] == 2  # ppo_epochs = 2, one mini-batch


@pytest.mark.slow
def test_mini_batches_2_are_two_sequential_updates_on_the_halves_with_old_logprobs_from_before(
    ranks, tiny_model_dir, start
):
    cfg = learner_cfg(ppo_epochs=1, mini_batches=2, lr=3e-3)
    (losses, norms), weights = reference_run(tiny_model_dir, cfg, [make_batch(1), make_batch(2)])
    got = ranks["mini2"]
    assert [s.extra["optimizer_steps"] for s in got["stats"]] == [2, 2]
    np.testing.assert_allclose([s.loss for s in got["stats"]], losses, rtol=0, atol=1e-5)
    np.testing.assert_allclose([s.grad_norm for s in got["stats"]], norms, rtol=1e-5)
    _close(got["weights"], weights, start)
    one = reference_run(tiny_model_dir, learner_cfg(ppo_epochs=1, lr=3e-3), [make_batch(1), make_batch(2)])[1]
    assert max(update_error(one[k].numpy(), weights[k], start[k]) for k in one) > 10  # k = 2 is another update
    # the second step scores with weights the first one moved, against old log-probs from before: ratio != 1
    assert all(s.extra["ratio_max"] > 1.0 + 1e-3 or s.extra["ratio_min"] < 1.0 - 1e-3 for s in got["stats"])
    one_step = ranks["full"]["stats"][0].extra  # ppo_epochs 2, one mini-batch: the first pass has ratio 1
    assert one_step["ratio_max"] >= 1.0


@pytest.mark.slow
def test_gspo_with_dr_grpo_aggregation_matches_reference(ranks, tiny_model_dir, start):
    (losses, norms), weights = reference_run(tiny_model_dir, GSPO_DR, [make_batch(1), make_batch(2)], max_new_tokens=8)
    got = ranks["gspo_dr"]
    np.testing.assert_allclose([s.loss for s in got["stats"]], losses, rtol=0, atol=1e-5)
    np.testing.assert_allclose([s.grad_norm for s in got["stats"]], norms, rtol=1e-5)
    _close(got["weights"], weights, start)
    assert got["stats"][0].clip_frac > 0  # the second epoch moved sequence ratios past 1 +- 4e-4


def test_mini_batch_rows_keep_groups_whole_and_never_empty():
    data = flatten_batch(make_batch(1, B=3, G=2))
    assert mini_batch_rows(data, 1) == [[0, 1, 2, 3, 4, 5]]
    assert mini_batch_rows(data, 2) == [[0, 1, 2, 3], [4, 5]]
    assert mini_batch_rows(data, 3) == [[0, 1], [2, 3], [4, 5]]
    assert mini_batch_rows(data, 5) == [[0, 1], [2, 3], [4, 5]]  # fewer clips than parts


@pytest.mark.slow
def test_tis_update_matches_reference_and_agreement_is_measured_before_the_update(ranks, tiny_model_dir, start):
    batch = make_batch(1, sampled=True)
    cfg = learner_cfg(ppo_epochs=1, tis_cap=2.0)
    (losses, norms), weights = reference_run(tiny_model_dir, cfg, [batch])
    got = ranks["tis"]
    np.testing.assert_allclose([s.loss for s in got["stats"]], losses, rtol=0, atol=1e-5)
    _close(got["weights"], weights, start)
    prompts, ids, mask, _ = rows(batch)
    with torch.no_grad():
        start = load_audio_llm(tiny_model_dir).sequence_logprobs(prompts, ids, mask)
    sampled = batch.rollout.sample_logprobs.reshape(ids.shape)
    valid = mask != 0
    diff = (start - sampled).abs()[valid]
    weight = torch.exp(start - sampled)[valid]
    extra = got["stats"][0].extra
    assert extra["logprob_diff_mean"] == pytest.approx(float(diff.mean()), rel=1e-5)
    assert extra["logprob_diff_max"] == pytest.approx(float(diff.max()), rel=1e-5)
    assert extra["is_weight_min"] == pytest.approx(float(weight.min()), rel=1e-4)
    assert extra["is_weight_max"] == pytest.approx(float(weight.max()), rel=1e-4)
    capped = float((weight >= 2.0).double().mean())
    assert 0 < capped < 1 and extra["tis_clip_frac"] == pytest.approx(capped, abs=1e-6)
    untouched = reference_run(tiny_model_dir, learner_cfg(ppo_epochs=1), [batch])[1]  # TIS changes the update
    assert max(float((untouched[k] - weights[k]).abs().max()) for k in weights) > 1e-6


@pytest.mark.slow
def test_beta_zero_keeps_no_reference_and_gives_the_plain_clipped_update(ranks, tiny_model_dir, start):
    cfg = learner_cfg(beta=0.0)
    (losses, norms), weights = reference_run(tiny_model_dir, cfg, [make_batch(1), make_batch(2)])
    got = ranks["no_reference"]
    np.testing.assert_allclose([s.loss for s in got["stats"]], losses, rtol=0, atol=1e-5)
    np.testing.assert_allclose([s.grad_norm for s in got["stats"]], norms, rtol=1e-5)
    _close(got["weights"], weights, start)
    with_kl = ranks["full"]["weights"]  # the same batches with beta = 0.04: the KL term does move the weights
    assert max(float(np.abs(with_kl[k] - got["weights"][k]).max()) for k in with_kl) > 1e-5
    assert got["no_ref_model"] and all(math.isnan(s.kl) for s in got["stats"])
    assert "learner.beta=0 keeps no reference model" in got["ref_error"]


@pytest.mark.slow
def test_shared_prompt_packing_gives_the_update_of_one_prompt_per_row(ranks, start):
    shared, unshared = ranks["full"], ranks["full_unshared"]
    np.testing.assert_allclose(
        [s.loss for s in shared["stats"]], [s.loss for s in unshared["stats"]], rtol=0, atol=1e-6
    )
    np.testing.assert_allclose([s.kl for s in shared["stats"]], [s.kl for s in unshared["stats"]], rtol=1e-5)
    _close(shared["weights"], {k: torch.from_numpy(v) for k, v in unshared["weights"].items()}, start)


@pytest.mark.slow
def test_learner_scores_samples_at_the_rollout_temperature(ranks, tiny_model_dir):
    """Reference log-probs on 2 FSDP ranks == the starting model's log-softmax(logits / 0.7)."""
    got = ranks["temperature"]
    batch = make_batch(1)
    prompts, ids, mask, _ = rows(batch)
    base = load_audio_llm(tiny_model_dir)
    with torch.no_grad():
        want = base.sequence_logprobs(prompts, ids, mask, temperature=0.7)
        at_one = base.sequence_logprobs(prompts, ids, mask)
    shape = batch.rollout.token_ids.shape
    np.testing.assert_allclose(got["ref_logprobs"], want.reshape(shape).numpy(), rtol=0, atol=1e-5)
    assert np.abs(got["ref_logprobs"] - at_one.reshape(shape).numpy()).max() > 1e-2


@pytest.mark.slow
def test_lora_updates_only_adapter_and_reference_is_the_base_model(ranks, tiny_model_dir, start):
    got = ranks["lora"]
    before, after = got["state_before"], got["state_after"]
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    lora_keys = {k for k in before if ".lora_A." in k or ".lora_B." in k}
    assert lora_keys and changed == lora_keys
    (losses, norms), weights = reference_run(
        tiny_model_dir, learner_cfg(finetune="lora"), [make_batch(1), make_batch(2)]
    )
    np.testing.assert_allclose([s.loss for s in got["stats"]], losses, rtol=0, atol=1e-5)
    np.testing.assert_allclose([s.grad_norm for s in got["stats"]], norms, rtol=1e-5)
    _close(got["weights"], weights, start)  # merged weights under plain names
    base = load_audio_llm(tiny_model_dir)
    batch = make_batch(1)
    prompts, ids, mask, _ = rows(batch)
    with torch.no_grad():
        want = base.sequence_logprobs(prompts, ids, mask).reshape(batch.rollout.token_ids.shape).numpy()
    np.testing.assert_allclose(got["ref_logprobs"], want, rtol=0, atol=1e-5)
    assert np.abs(got["logprobs"] - want).max() > 1e-4  # the policy itself has moved away from the base


@pytest.mark.slow
@pytest.mark.parametrize("agg", AGGS)
def test_micro_batch_2_and_8_give_the_same_update(ranks, agg):
    small, big = ranks[f"{agg}/2"], ranks[f"{agg}/8"]
    assert small["stats"][0].extra["micro_batches"] == 3 and big["stats"][0].extra["micro_batches"] == 1
    assert small["stats"][0].loss == pytest.approx(big["stats"][0].loss, abs=1e-6)
    worst = max(float(np.abs(small["weights"][k] - big["weights"][k]).max()) for k in big["weights"])
    assert worst <= 5e-6  # fp32 round-off: packing puts different rows in one sequence at the two sizes
    other = ranks[f"{AGGS[1 - AGGS.index(agg)]}/2"]
    assert abs(other["stats"][0].loss - small["stats"][0].loss) > 1e-6  # the two modes really differ here


@pytest.mark.slow
@pytest.mark.parametrize("case, words", [("nan_adv", "advantages contain NaN"), ("nan_loss", "loss is NaN")])
def test_nan_raises_before_the_step_and_leaves_weights_unchanged(ranks, case, words):
    got = ranks[case]
    assert got["error"] is not None and words in got["error"]
    assert got["unchanged"] and got["after_ok"]


def test_rank_micro_batches_split_rows_and_pad_with_empty_batches():
    assert rank_micro_batches(9, 0, 2, 2) == [[0, 2], [4, 6], [8]]
    assert rank_micro_batches(9, 1, 2, 2) == [[1, 3], [5, 7], []]
    assert rank_micro_batches(1, 1, 2, 8) == [[]]
    assert rank_micro_batches(9, 0, 1, 8) == [list(range(8)), [8]]


def test_lr_multiplier_warmup_then_schedule():
    assert [lr_multiplier(s, "constant", 2, None) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert [lr_multiplier(s, "linear", 1, 5) for s in range(6)] == [1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    cos = [lr_multiplier(s, "cosine", 0, 4) for s in range(5)]
    np.testing.assert_allclose(cos, [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2, 0])
    with pytest.raises(ValueError, match="total_steps"):
        lr_multiplier(3, "cosine", 0, None)


@pytest.mark.slow
@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_train_encoder_recomputes_prompts_from_audio_and_matches_reference(
    ranks, tiny_model_dir, waves, finetune, start
):
    got = ranks["encoder" if finetune == "full" else "encoder_lora"]
    batches = [audio_batch(1, waves), audio_batch(2, waves)]
    (losses, norms), weights, frontend = reference_run(
        tiny_model_dir, learner_cfg(finetune=finetune), batches, train_encoder=True
    )
    np.testing.assert_allclose([s.loss for s in got["stats"]], losses, rtol=0, atol=1e-5)
    np.testing.assert_allclose([s.grad_norm for s in got["stats"]], norms, rtol=1e-5)
    _close(got["weights"], weights, start)
    _close(got["frontend"], frontend, start)
    start = dict(load_audio_llm(tiny_model_dir).frontend.named_parameters())
    assert max(float(np.abs(got["frontend"][k] - start[k].detach().numpy()).max()) for k in start) > 1e-5
    if finetune == "lora":  # the reference is the untouched model: base LLM and starting encoder
        base = load_audio_llm(tiny_model_dir)
        _, ids, mask, _ = rows(batches[0])
        with torch.no_grad():
            want = base.sequence_logprobs(audio_prompts(base, batches[0]), ids, mask)
        np.testing.assert_allclose(got["ref_logprobs"], want.reshape(got["ref_logprobs"].shape), rtol=0, atol=1e-5)
