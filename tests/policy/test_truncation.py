"""policy.truncation: DAPO's overlong penalty and overlong filtering, on hand-computed values."""

import pytest
import torch

from policy.messages import Clip, PromptBatch, RolloutBatch, ScoredRollout
from policy.truncation import mask_truncated, overlong_penalty, rollout_penalty


def test_overlong_penalty_ramps_over_the_buffer_and_is_full_when_truncated():
    lengths = torch.tensor([[4, 6, 7, 8, 8]])
    truncated = torch.tensor([[False, False, False, False, True]])
    # limit 8, buffer 4: free up to 4 tokens, then -0.5 (l - 4) / 4; 8 tokens (ended or cut there): -0.5
    got = overlong_penalty(lengths, truncated, max_new_tokens=8, buffer=4, penalty=0.5)
    assert got.tolist() == [[0.0, pytest.approx(-0.25), pytest.approx(-0.375), -0.5, -0.5]]
    hard = overlong_penalty(lengths, truncated, max_new_tokens=8, buffer=0)
    assert hard.tolist() == [[0.0, 0.0, 0.0, 0.0, -1.0]]
    with pytest.raises(ValueError, match="buffer must be in"):
        overlong_penalty(lengths, truncated, max_new_tokens=8, buffer=8)


def _scored() -> ScoredRollout:
    mask = torch.tensor([[[1, 1, 1], [1, 0, 0]], [[1, 1, 0], [1, 1, 1]]], dtype=torch.float32)
    prompts = PromptBatch((Clip("/a.wav", "a"), Clip("/b.wav", "b")), (torch.zeros(1, 4), torch.zeros(1, 4)))
    rollout = RolloutBatch(
        prompts,
        mask.long(),
        mask,
        -mask,
        (("x", "y"), ("z", "w")),
        truncated=torch.tensor([[True, False], [False, True]]),
    )
    rewards = {"total": torch.tensor([[1.0, 0.0], [0.5, 0.2]])}
    return ScoredRollout(rollout, rewards, torch.tensor([[1.0, -1.0], [1.0, -1.0]]))


def test_mask_truncated_zeroes_only_the_loss_mask_of_truncated_hypotheses():
    scored = _scored()
    masked = mask_truncated(scored)
    assert masked.rollout.mask.sum(-1).tolist() == [[0.0, 1.0], [2.0, 0.0]]
    assert torch.equal(masked.advantages, scored.advantages) and masked.rewards is scored.rewards
    assert torch.equal(masked.rollout.token_ids, scored.rollout.token_ids)
    assert rollout_penalty(scored.rollout, max_new_tokens=3).tolist() == [[-1.0, 0.0], [0.0, -1.0]]
