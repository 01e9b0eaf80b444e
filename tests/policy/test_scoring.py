"""policy.scoring: reward tensors [B, G] from a hand-built RolloutBatch, advantages, dynamic sampling."""

from __future__ import annotations

import math

import pytest
import torch

import rewards
from policy.grpo import group_advantages
from policy.messages import Clip, PromptBatch, RolloutBatch
from policy.scoring import drop_flat_groups, score_and_advantage, score_rollout, select_groups

CLIPS = (
    Clip("/d/0.wav", "hello world", "en", keywords=("world",)),
    Clip("/d/1.wav", "我爱北京", "zh"),
    Clip("/d/2.wav", ""),  # noise-only
    Clip("/d/3.wav", "good morning", "en"),
)
TEXTS = (
    ("hello world", "hello"),
    ("我爱北京", "我爱"),
    ("", "thank you"),
    ("good morning", "good morning"),  # a flat group: equal rewards
)
# Hand-computed (docs/design.md#rewards): wer = 1 - WER; keyword = (precision + recall) / 2, NaN without keywords;
# hallucination = -hallucinated/max(1, N_ref); language 0 (no mismatch here); total = their sum.
WER = [[1.0, 0.5], [1.0, 0.5], [1.0, 0.0], [1.0, 1.0]]
KEYWORD = [[1.0, 0.5]] + [[math.nan, math.nan]] * 3
HALLUCINATION = [[0.0, 0.0], [0.0, 0.0], [0.0, -1.0], [0.0, 0.0]]
TOTAL = [[2.0, 1.0], [1.0, 0.5], [1.0, -1.0], [1.0, 1.0]]


def make_rollout(clips=CLIPS, texts=TEXTS, T=3, H=4) -> RolloutBatch:
    """Row b of every tensor is filled with values that identify b (to check which rows are kept)."""
    B, G = len(clips), len(texts[0])
    prompts = PromptBatch(clips=tuple(clips), prompt_embeds=tuple(torch.full((2 + b, H), float(b)) for b in range(B)))
    token_ids = torch.arange(B).view(B, 1, 1).expand(B, G, T).clone() + 1
    lengths = torch.tensor([[1 + (b + g) % T for g in range(G)] for b in range(B)])
    mask = (torch.arange(T) < lengths[..., None]).float()
    logprobs = -(torch.arange(B * G * T, dtype=torch.float32).view(B, G, T) + 1) * mask
    return RolloutBatch(
        prompts=prompts,
        token_ids=token_ids * mask.long(),
        mask=mask,
        sample_logprobs=logprobs,
        texts=tuple(tuple(row) for row in texts),
        seconds=1.5,
    )


def assert_tensor(actual: torch.Tensor, expected) -> None:
    expected = torch.tensor(expected, dtype=torch.float32)
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    assert torch.equal(torch.isnan(actual), torch.isnan(expected))
    torch.testing.assert_close(actual.nan_to_num(), expected.nan_to_num())


def test_every_reward_is_a_b_by_g_tensor_with_nan_where_not_applicable():
    scores = score_rollout(make_rollout())
    assert set(scores) == set(rewards.REGISTRY) | {"total"}
    for name, t in scores.items():
        assert t.shape == (4, 2), name
    assert_tensor(scores["wer"], WER)
    assert_tensor(scores["keyword"], KEYWORD)
    assert_tensor(scores["hallucination"], HALLUCINATION)
    assert_tensor(scores["language"], [[0.0, 0.0]] * 4)
    assert_tensor(scores["total"], TOTAL)


def test_language_mismatch_shows_in_its_own_tensor():
    clips = (Clip("/x.wav", "今天天气好", "zh"),)
    scores = score_rollout(make_rollout(clips, (("today is good", "今天天气好"),)))
    assert_tensor(scores["language"], [[-1.0, 0.0]])


@pytest.mark.parametrize("weights", [None, {"wer": 2.0, "hallucination": 0.5}, {"keyword": 1.0}])
def test_totals_equal_score_batch_called_per_hypothesis(weights):
    scores = score_rollout(make_rollout(), weights)
    for b, clip in enumerate(CLIPS):
        for g, hyp in enumerate(TEXTS[b]):
            one = rewards.score_batch([hyp], [clip.text], [clip.meta()], weights=weights)[0]
            assert scores["total"][b, g].item() == pytest.approx(one["total"])
            for name, value in one.items():
                got = scores[name][b, g].item()
                assert math.isnan(got) if value is None else got == pytest.approx(value), (name, b, g)


def test_advantages_are_group_advantages_of_the_total():
    rollout = make_rollout()
    scored = score_and_advantage(rollout)
    assert scored.rollout is rollout
    torch.testing.assert_close(scored.advantages, group_advantages(scored.rewards["total"]))
    s = 1 / math.sqrt(2)  # two values a > b: mean ± (a - b)/2, unbiased std (a - b)/sqrt(2)
    torch.testing.assert_close(
        scored.advantages, torch.tensor([[s, -s], [s, -s], [s, -s], [0.0, 0.0]]), atol=1e-5, rtol=0
    )
    scored_eps = score_and_advantage(rollout, eps=0.5)
    torch.testing.assert_close(scored_eps.advantages, group_advantages(scored.rewards["total"], eps=0.5))


def test_drop_flat_groups_keeps_the_informative_rows_of_everything():
    clips = (CLIPS[0], CLIPS[3], CLIPS[2], CLIPS[3])  # flat groups at rows 1 and 3
    texts = (TEXTS[0], TEXTS[3], TEXTS[2], TEXTS[3])
    rollout = make_rollout(clips, texts)
    scored = score_and_advantage(rollout)
    kept, dropped = drop_flat_groups(scored)
    keep = [0, 2]
    assert dropped == 2
    r = kept.rollout
    assert torch.equal(r.token_ids, rollout.token_ids[keep]) and torch.equal(r.mask, rollout.mask[keep])
    assert torch.equal(r.sample_logprobs, rollout.sample_logprobs[keep])
    assert r.texts == (texts[0], texts[2]) and r.prompts.clips == (clips[0], clips[2])
    assert all(a is rollout.prompts.prompt_embeds[i] for a, i in zip(r.prompts.prompt_embeds, keep))
    assert r.seconds == rollout.seconds
    assert set(kept.rewards) == set(scored.rewards)
    for name, t in kept.rewards.items():
        assert torch.equal(t.nan_to_num(), scored.rewards[name][keep].nan_to_num()), name
    assert torch.equal(kept.advantages, scored.advantages[keep])


def test_drop_flat_groups_without_flat_groups_returns_the_batch_itself():
    scored = score_and_advantage(make_rollout(CLIPS[:3], TEXTS[:3]))
    assert drop_flat_groups(scored) == (scored, 0)


def test_drop_flat_groups_all_flat_gives_none():
    clips = (CLIPS[3], CLIPS[2])
    scored = score_and_advantage(make_rollout(clips, (TEXTS[3], ("", ""))))
    assert drop_flat_groups(scored) == (None, 2)


def test_nan_reward_raises_floating_point_error_naming_reward_clip_and_hypothesis(monkeypatch):
    def flaky(hyps, refs, metas):
        return [math.nan if h == "hello" else 0.0 for h in hyps]

    monkeypatch.setitem(rewards.REGISTRY, "flaky", flaky)
    expected = (
        "reward 'flaky' is NaN for clip 0 (/d/0.wav), hypothesis 1 ('hello'): check the reward functions "
        "and plugins; the step was stopped before any update"
    )
    with pytest.raises(FloatingPointError) as info:
        score_rollout(make_rollout())
    assert str(info.value) == expected
    with pytest.raises(FloatingPointError, match=r"'flaky' is NaN for clip 0"):
        score_and_advantage(make_rollout())


def test_total_beyond_float32_raises_floating_point_error_naming_the_item(monkeypatch):
    monkeypatch.setitem(
        rewards.REGISTRY, "big", lambda hyps, refs, metas: [1e39 if h == "hello" else 0.0 for h in hyps]
    )
    with pytest.raises(FloatingPointError, match=r"reward total is NaN/inf for \(clip, hypothesis\) \[\[0, 1\]\]"):
        score_rollout(make_rollout(), {"big": 1.0})


def test_bad_reward_value_names_the_rollout_clip_and_hypothesis(monkeypatch):
    monkeypatch.setitem(
        rewards.REGISTRY, "texty", lambda hyps, refs, metas: ["x" if h == "thank you" else 0.0 for h in hyps]
    )
    with pytest.raises(rewards.RewardError) as info:
        score_rollout(make_rollout(), {"texty": 1.0})
    assert str(info.value) == (
        "reward 'texty' returned 'x' (a str) for clip 5 (ref '', hyp 'thank you'); expected "
        "a float or None; in this rollout: clip 2 (/d/2.wav), hypothesis 1"
    )
    assert (info.value.reward, info.value.item) == ("texty", 5)


def test_reward_of_weight_zero_is_not_run_and_not_in_the_scores(monkeypatch):
    calls = []

    def broken(hyps, refs, metas):
        calls.append(len(hyps))
        return [math.nan] * len(hyps)

    monkeypatch.setitem(rewards.REGISTRY, "broken", broken)
    weights = {"wer": 1.0, "keyword": 1.0, "hallucination": 1.0, "language": 1.0, "broken": 0.0}
    scored = score_and_advantage(make_rollout(), weights)
    assert calls == []
    assert list(scored.rewards) == ["wer", "keyword", "hallucination", "language", "total"]
    assert_tensor(scored.rewards["wer"], WER)
    assert_tensor(scored.rewards["keyword"], KEYWORD)
    assert_tensor(scored.rewards["hallucination"], HALLUCINATION)
    assert_tensor(scored.rewards["total"], TOTAL)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(
        scored.advantages, torch.tensor([[s, -s], [s, -s], [s, -s], [0.0, 0.0]]), atol=1e-5, rtol=0
    )


def test_advantage_estimator_and_extra_reward_terms_enter_the_total():
    rollout = make_rollout()
    overlong = torch.tensor([[0.0, -1.0]] * 4)
    scored = score_and_advantage(rollout, estimator="rloo", extra={"overlong": overlong})
    total = torch.tensor(TOTAL) + overlong
    assert (
        scored.rewards["total"].tolist() == total.tolist() and scored.rewards["overlong"].tolist() == overlong.tolist()
    )
    # rloo with G = 2: A_i = r_i - r_other
    assert scored.advantages.tolist() == [[a - b, b - a] for a, b in total.tolist()]
    with pytest.raises(ValueError, match="extra reward 'wer' must be new"):
        score_and_advantage(rollout, extra={"wer": overlong})


def test_select_groups_keeps_every_field_of_the_chosen_clips():
    rollout = make_rollout()
    flags = torch.tensor([[True, False], [False, False], [False, True], [True, True]])
    rollout = RolloutBatch(
        rollout.prompts, rollout.token_ids, rollout.mask, rollout.sample_logprobs, rollout.texts, truncated=flags
    )
    picked = select_groups(score_and_advantage(rollout), [3, 0])
    assert [c.audio for c in picked.rollout.prompts.clips] == ["/d/3.wav", "/d/0.wav"]
    assert picked.rollout.truncated.tolist() == [[True, True], [True, False]]
    assert picked.rewards["total"].tolist() == [TOTAL[3], TOTAL[0]] and picked.rollout.texts == (TEXTS[3], TEXTS[0])
