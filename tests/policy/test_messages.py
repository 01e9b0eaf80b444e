"""policy.messages: shape checks of RolloutBatch, its truncated flags and joining batches."""

import pytest
import torch

from policy.messages import Clip, PromptBatch, RolloutBatch, ScoredRollout


def _batch(B: int, G: int, T: int, tag: str, truncated=None) -> RolloutBatch:
    clips = tuple(Clip(audio=f"/{tag}{i}.wav", text=tag) for i in range(B))
    prompts = PromptBatch(clips, tuple(torch.full((2, 4), float(i)) for i in range(B)))
    ids = torch.arange(B * G * T).view(B, G, T) + 1
    return RolloutBatch(
        prompts,
        ids,
        torch.ones(B, G, T),
        -torch.ones(B, G, T),
        tuple(tuple(f"{tag}{b}{g}" for g in range(G)) for b in range(B)),
        seconds=float(T),
        truncated=truncated,
    )


def test_truncated_defaults_to_none_truncated_and_is_shape_checked():
    assert _batch(2, 3, 4, "a").truncated.tolist() == [[False] * 3] * 2
    with pytest.raises(ValueError, match=r"truncated has shape \(3,\), expected \(2, 3\)"):
        _batch(2, 3, 4, "a", truncated=torch.zeros(3, dtype=torch.bool))


def test_concat_pads_tokens_and_keeps_clip_order_and_flags():
    a = _batch(2, 2, 3, "a", truncated=torch.tensor([[True, False], [False, False]]))
    b = _batch(1, 2, 5, "b", truncated=torch.tensor([[False, True]]))
    joined = RolloutBatch.concat([a, b])
    assert joined.token_ids.shape == (3, 2, 5) and joined.seconds == 5.0
    assert [c.audio for c in joined.prompts.clips] == ["/a0.wav", "/a1.wav", "/b0.wav"]
    assert joined.texts[2] == ("b00", "b01")
    assert torch.equal(joined.token_ids[:2, :, :3], a.token_ids) and joined.token_ids[:2, :, 3:].eq(0).all()
    assert joined.mask[:2, :, 3:].eq(0).all() and joined.sample_logprobs[:2, :, 3:].eq(0).all()
    assert joined.truncated.tolist() == [[True, False], [False, False], [False, True]]
    assert RolloutBatch.concat([a]) is a


def test_scored_concat_joins_groups_rewards_and_advantages():
    a = ScoredRollout(_batch(2, 2, 3, "a"), {"total": torch.ones(2, 2), "wer": torch.zeros(2, 2)}, torch.ones(2, 2))
    b = ScoredRollout(
        _batch(1, 2, 4, "b"), {"total": torch.full((1, 2), 2.0), "wer": torch.ones(1, 2)}, -torch.ones(1, 2)
    )
    joined = ScoredRollout.concat([a, b])
    assert joined.rewards["total"].tolist() == [[1, 1], [1, 1], [2, 2]] and joined.rewards["wer"].shape == (3, 2)
    assert joined.advantages.tolist() == [[1, 1], [1, 1], [-1, -1]] and joined.rollout.token_ids.shape == (3, 2, 4)
    with pytest.raises(ValueError, match="different rewards"):
        ScoredRollout.concat([a, ScoredRollout(b.rollout, {"total": b.rewards["total"]}, b.advantages)])


def test_a_joined_or_selected_batch_carries_the_oldest_policy_version_of_its_parts():
    from dataclasses import replace

    from policy.scoring import select_groups

    a, b = replace(_batch(2, 2, 3, "a"), policy_version=4), replace(_batch(1, 2, 3, "b"), policy_version=3)
    assert RolloutBatch.concat([a, b]).policy_version == 3  # the learner then sees the stale part
    assert RolloutBatch.concat([a, _batch(1, 2, 3, "c")]).policy_version == 4  # an unversioned part: no claim
    assert RolloutBatch.concat([_batch(1, 2, 3, "c"), _batch(1, 2, 3, "d")]).policy_version is None
    scored = ScoredRollout(a, {"total": torch.ones(2, 2)}, torch.ones(2, 2))
    assert select_groups(scored, [1]).rollout.policy_version == 4


def test_check_policy_version_names_both_versions_and_takes_up_to_max_lag_older_ones():
    from policy.messages import StaleRolloutError, check_policy_version

    check_policy_version(None, 7)
    check_policy_version(7, 7)
    with pytest.raises(StaleRolloutError, match="policy version 6, but the learner is at version 7"):
        check_policy_version(6, 7)
    check_policy_version(6, 7, max_lag=1)  # one step off: sampled before the last update
    check_policy_version(7, 7, max_lag=1)
    with pytest.raises(StaleRolloutError, match=r"policy version 5, .* takes versions 6\.\.7"):
        check_policy_version(5, 7, max_lag=1)
    with pytest.raises(StaleRolloutError, match="policy version 8"):  # newer than the learner: never
        check_policy_version(8, 7, max_lag=1)


def test_samples_leave_the_prompts_behind_and_attach_back_to_the_same_batch():
    a = _batch(2, 3, 4, "a", truncated=torch.tensor([[True, False, False], [False, False, True]]))
    samples = a.samples()
    assert not hasattr(samples, "prompts")
    back = RolloutBatch.of(a.prompts, samples)
    for name in a.__dataclass_fields__:  # the same objects, nothing copied
        assert getattr(back, name) is getattr(a, name), name
    with pytest.raises(ValueError, match=r"1 prompts for 2 rows"):
        RolloutBatch.of(_batch(1, 3, 4, "b").prompts, a.samples())


def test_payload_bytes_counts_every_tensor_of_a_message_by_hand():
    from policy.messages import payload_bytes

    a = _batch(2, 3, 4, "a")
    prompts = 2 * (2 * 4 * 4)  # two [2, 4] float32 prompt embeddings
    samples = 2 * 3 * 4 * (8 + 4 + 4) + 2 * 3  # ids int64, mask + logprobs float32, truncated bool
    assert payload_bytes(a.prompts) == prompts
    assert payload_bytes(a.samples()) == samples
    assert payload_bytes(a) == prompts + samples
    assert payload_bytes([a.samples(), {"x": torch.zeros(3, dtype=torch.float16)}]) == samples + 6
    assert payload_bytes("text") == 0
