"""policy.config: per-field coercion and validation of the model / LoRA / learner sections."""

from __future__ import annotations

import dataclasses

import pytest

from policy.config import ConfigError, LearnerConfig, LoraConfig, ModelConfig, coerce


def test_learner_defaults_match_design():
    cfg = LearnerConfig()
    assert (cfg.lr, cfg.clip_eps, cfg.beta, cfg.kl_kind, cfg.agg) == (1e-5, 0.2, 0.04, "k3", "seq-mean-token-mean")
    assert cfg.adam_betas == (0.9, 0.999) and cfg.lora == LoraConfig() and cfg.finetune == "full"


def test_values_are_coerced_to_the_field_type():
    cfg = LearnerConfig(
        lr="1e-5", adam_betas=[0.9, 0.95], grad_clip=1, warmup_steps=10.0, lora={"r": 16, "target_modules": ["q_proj"]}
    )
    assert cfg.lr == 1e-5 and isinstance(cfg.lr, float)
    assert cfg.adam_betas == (0.9, 0.95) and isinstance(cfg.adam_betas, tuple)
    assert isinstance(cfg.grad_clip, float) and cfg.warmup_steps == 10 and isinstance(cfg.warmup_steps, int)
    assert cfg.lora == LoraConfig(r=16, target_modules=("q_proj",))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"clip_eps": 1.5}, "learner.clip_eps must be in (0, 1), got 1.5"),
        ({"clip_eps": 0.0}, "learner.clip_eps must be in (0, 1), got 0.0"),
        ({"lr": 0}, "learner.lr must be > 0, got 0.0"),
        ({"beta": -0.1}, "learner.beta must be >= 0, got -0.1"),
        ({"kl_kind": "k9"}, "learner.kl_kind must be one of k1, k2, k3, got 'k9'"),
        (
            {"agg": "sum"},
            "learner.agg must be one of seq-mean-token-mean, token-mean, seq-mean-token-sum-norm, got 'sum'",
        ),
        ({"lr_schedule": "step"}, "learner.lr_schedule must be one of constant, cosine, linear, got 'step'"),
        ({"finetune": "qlora"}, "learner.finetune must be one of full, lora, got 'qlora'"),
        ({"adam_betas": (0.9, 1.0)}, "learner.adam_betas must be two numbers in [0, 1), got (0.9, 1.0)"),
        ({"adam_betas": (0.9,)}, "learner.adam_betas must be a list of 2 values"),
        ({"ppo_epochs": 0}, "learner.ppo_epochs must be >= 1, got 0"),
        ({"cpu_threads": -1}, "learner.cpu_threads must be >= 0, got -1"),
        ({"micro_batch": 2.5}, "learner.micro_batch must be an integer, got 2.5"),
        ({"num_ranks": True}, "learner.num_ranks must be an integer, got True"),
        ({"lr": float("nan")}, "learner.lr must be a number, got nan"),
        ({"dtype": "float16"}, "learner.dtype must be one of float32, bfloat16, got 'float16'"),
        ({"advantage": "ppo"}, "learner.advantage must be one of grpo, dr_grpo, rloo, got 'ppo'"),
        ({"loss": "dpo"}, "learner.loss must be one of ppo_clip, gspo, got 'dpo'"),
        ({"clip_eps_high": 1.5}, "learner.clip_eps_high must be in (0, 1), got 1.5"),
        ({"mini_batches": 0}, "learner.mini_batches must be >= 1, got 0"),
        ({"tis_cap": 0}, "learner.tis_cap must be > 0, got 0"),
        ({"kl_clamp": -1}, "learner.kl_clamp must be > 0, got -1"),
    ],
)
def test_learner_validation_names_the_dotted_key(kwargs, message):
    with pytest.raises(ConfigError) as info:
        LearnerConfig(**kwargs)
    assert message in str(info.value)
    assert info.value.key == f"learner.{next(iter(kwargs))}"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, "learner.lora.r must be in [1, 512], got 0"),
        ({"dropout": 1.0}, "learner.lora.dropout must be in [0, 1), got 1.0"),
        ({"target_modules": ()}, "learner.lora.target_modules must not be empty"),
    ],
)
def test_lora_validation_names_the_nested_key(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        LoraConfig(**kwargs)
    with pytest.raises(ConfigError, match="learner.lora"):
        LearnerConfig(lora=kwargs)


def test_model_config_validation():
    assert ModelConfig(prompt=None).prompt is None
    assert ModelConfig(dtype="bfloat16", train_encoder="yes").train_encoder is True
    with pytest.raises(ConfigError, match="model.dtype must be one of float32, bfloat16, float16, got 'int8'"):
        ModelConfig(dtype="int8")
    with pytest.raises(ConfigError, match="model.train_encoder must be a boolean, got 2"):
        ModelConfig(train_encoder=2)


def test_sections_are_frozen():
    cfg = LearnerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lora.r = 4


def test_coerce_optional_and_collections():
    assert coerce(None, int | None, "k") is None
    assert coerce("3", int | None, "k") == 3
    assert coerce("a, b,", tuple[str, ...], "k") == ("a", "b")
    assert coerce({"wer": 2}, dict[str, float], "k") == {"wer": 2.0}
    with pytest.raises(ConfigError, match=r"k\.wer must be a number, got 'x'"):
        coerce({"wer": "x"}, dict[str, float], "k")
    with pytest.raises(ConfigError, match=r"k\[1\] must be a number, got 'x'"):
        coerce([1, "x"], tuple[float, float], "k")
