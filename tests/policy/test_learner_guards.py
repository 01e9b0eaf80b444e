"""Learner guards on one in-process rank (gloo): a checkpoint is never written from NaN/inf weights."""

import math

import pytest
import torch

from policy.config import LearnerConfig, ModelConfig
from policy.distributed import free_port
from policy.learner import Learner


def test_update_refuses_a_rollout_sampled_with_other_weights_and_changes_nothing(tiny_model_dir):
    from dataclasses import replace

    from learner_ranks import learner_cfg, make_batch, one_rank_learner

    from policy.messages import StaleRolloutError

    def versioned(seed: int, version: int):
        batch = make_batch(seed)
        return replace(batch, rollout=replace(batch.rollout, policy_version=version))

    with one_rank_learner(tiny_model_dir, learner_cfg(ppo_epochs=1)) as learner:
        learner.update(versioned(1, 0))  # sampled with the starting weights: version 0
        weights = [p.detach().full_tensor().clone() for p in learner.root.parameters()]
        with pytest.raises(StaleRolloutError, match="sampled with policy version 0, but the learner is at version 1"):
            learner.update(versioned(2, 0))  # the engines missed the sync after update 1
        assert all(torch.equal(w, p.detach().full_tensor()) for w, p in zip(weights, learner.root.parameters()))
        assert learner.updates == 1
        learner.update(versioned(2, 1))
        learner.update(make_batch(1))  # a hand-built batch (no version) is not checked
        assert learner.updates == 3
        learner.update(versioned(3, 2), max_lag=1)  # one step off (run.async_steps=1): one version behind
        assert learner.updates == 4


def test_save_checkpoint_refuses_nan_weights_and_writes_nothing(tiny_model_dir, tmp_path):
    learner = Learner(
        str(tiny_model_dir),
        ModelConfig(path=str(tiny_model_dir)),
        LearnerConfig(beta=0.0),
        0,
        1,
        "127.0.0.1",
        free_port(),
    )
    learner.setup()
    try:
        learner.save_checkpoint(str(tmp_path / "good"))
        name, param = next((n, p) for n, p in learner.root.named_parameters() if p.requires_grad)
        with torch.no_grad():
            local = param.to_local() if hasattr(param, "to_local") else param
            local.view(-1)[0] = math.nan
        with pytest.raises(FloatingPointError, match=f"NaN/inf \\({name}\\)"):
            learner.save_checkpoint(str(tmp_path / "bad"))
        assert not (tmp_path / "bad").exists() and (tmp_path / "good" / "learner.json").is_file()
    finally:
        learner.shutdown()
