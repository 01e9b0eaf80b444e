"""Learner guards on one in-process rank (gloo): a checkpoint is never written from NaN/inf weights."""

import math

import pytest
import torch

from policy.config import LearnerConfig, ModelConfig
from policy.distributed import free_port
from policy.learner import Learner


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
