"""funrl.config: YAML + dotted overrides, unknown-key suggestions, validation, round-trip."""

from __future__ import annotations

import dataclasses
import os

import pytest

from funrl.config import (
    ConfigError,
    LoraConfig,
    RayConfig,
    RolloutConfig,
    TrainConfig,
    dump_config,
    load_config,
    save_config,
    validate_reward_names,
)


def _write(tmp_path, text: str, name: str = "cfg.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults_without_file_or_overrides():
    assert load_config(None, []) == TrainConfig()
    assert TrainConfig().rewards.weights == {"wer": 1.0, "keyword": 1.0, "hallucination": 1.0, "language": 1.0}


def test_overrides_of_each_type():
    cfg = load_config(
        None,
        [
            "rollout.n=8",  # int
            "rollout.temperature=0.7",  # float
            "learner.lr=5e-6",  # float written the way YAML 1.1 reads as a string
            "rollout.enforce_eager=false",  # bool
            "learner.finetune=lora",  # str
            "model.path=0123",  # str that YAML would read as an (octal) int
            "ray.address=auto",  # str | None
            "model.prompt=null",  # None
            "ray.num_cpus=4",  # int | None
            "learner.adam_betas=[0.9,0.95]",  # fixed tuple
            "learner.lora.target_modules=[q_proj, v_proj]",  # tuple[str, ...]
            "rewards.plugins=my_rewards:score",  # tuple from one string
            "learner.lora.r=16",  # nested section
        ],
    )
    assert cfg.rollout.n == 8 and cfg.rollout.temperature == 0.7 and cfg.learner.lr == 5e-6
    assert cfg.rollout.enforce_eager is False and cfg.learner.finetune == "lora"
    assert cfg.model.path == "0123" and cfg.ray.address == "auto" and cfg.model.prompt is None
    assert cfg.ray.num_cpus == 4 and cfg.learner.adam_betas == (0.9, 0.95)
    assert cfg.learner.lora == LoraConfig(r=16, target_modules=("q_proj", "v_proj"))
    assert cfg.rewards.plugins == ("my_rewards:score",)


def test_nested_dict_override_changes_one_entry_and_keeps_the_rest():
    cfg = load_config(None, ["rewards.weights.wer=2", "rewards.weights.my_plugin=0.5"])
    assert cfg.rewards.weights == {"wer": 2.0, "keyword": 1.0, "hallucination": 1.0, "language": 1.0, "my_plugin": 0.5}
    # a whole mapping replaces, in a file or as an override
    assert load_config(None, ["rewards.weights={wer: 1}"]).rewards.weights == {"wer": 1.0}


def test_file_then_overrides_in_order(tmp_path):
    path = _write(
        tmp_path,
        "rollout:\n  n: 6\n  top_p: 0.9\nrewards:\n  weights: {wer: 1, keyword: 0.5}\nlearner:\n  lora:\n    r: 4\n",
    )
    cfg = load_config(path, ["rollout.n=8", "rewards.weights.keyword=2", "learner.lora={alpha: 8}"])
    assert cfg.rollout.n == 8 and cfg.rollout.top_p == 0.9  # override wins, file kept otherwise
    assert cfg.rewards.weights == {"wer": 1.0, "keyword": 2.0}  # file mapping replaced the default
    assert cfg.learner.lora.r == 4 and cfg.learner.lora.alpha == 8  # section mapping merges


def test_unknown_override_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'rollout\.nn'; did you mean rollout\.n\?"):
        load_config(None, ["rollout.nn=8"])
    with pytest.raises(ConfigError, match=r"'lerner'; did you mean learner\?"):
        load_config(None, ["lerner.lr=1"])
    with pytest.raises(ConfigError, match=r"'learner\.lora\.alhpa'; did you mean learner\.lora\.alpha\?"):
        load_config(None, ["learner.lora.alhpa=3"])


def test_typo_in_yaml_file_names_file_line_and_key(tmp_path):
    path = _write(tmp_path, "run:\n  steps: 3\nlearner:\n  lr: 1.0e-6\n  clip_esp: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, [])
    msg = str(info.value)
    assert msg.startswith(f"{path}:5: ") and "'learner.clip_esp'" in msg and "did you mean learner.clip_eps" in msg
    with pytest.raises(ConfigError, match=r"cfg2\.yaml:1: unknown config key 'rolout'; did you mean rollout"):
        load_config(_write(tmp_path, "rolout: {n: 2}\n", "cfg2.yaml"), [])


def test_bad_yaml_and_missing_file_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: invalid YAML"):
        load_config(_write(tmp_path, "run:\n  steps: 3: 4\n", "bad.yaml"), [])
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "missing.yaml"), [])
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(_write(tmp_path, "- 1\n- 2\n", "list.yaml"), [])
    with pytest.raises(ConfigError, match=r"must look like key=value"):
        load_config(None, ["rollout.n"])


def test_validation_errors_name_the_dotted_key_and_where_it_was_set(tmp_path):
    with pytest.raises(ConfigError, match=r"^learner\.clip_eps must be in \(0, 1\), got 1\.5 \(set in override"):
        load_config(None, ["learner.clip_eps=1.5"])
    path = _write(tmp_path, "rollout:\n  top_p: 0\n")
    with pytest.raises(ConfigError, match=rf"rollout\.top_p must be in \(0, 1\], got 0\.0 \(set in {path}:2\)"):
        load_config(path, [])
    with pytest.raises(ConfigError, match=r"rewards\.weights\.wer must be a number, got 'high'"):
        load_config(None, ["rewards.weights.wer=high"])
    with pytest.raises(ConfigError, match=r"rollout\.n must be >= 2 for GRPO"):
        load_config(None, ["rollout.n=1"])
    with pytest.raises(ConfigError, match=r"run\.save_every must be >= 1, got 0"):
        load_config(None, ["run.save_every=0"])
    with pytest.raises(ConfigError, match=r"rewards\.plugins must be module:function entries"):
        load_config(None, ["rewards.plugins=[not a plugin]"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_p": 1.5}, r"rollout\.top_p must be in \(0, 1\], got 1\.5"),
        ({"temperature": 0}, r"rollout\.temperature must be > 0, got 0\.0"),
        ({"max_new_tokens": 512}, r"rollout\.max_new_tokens must be < rollout\.max_model_len \(512\)"),
        ({"gpu_memory_utilization": 0}, r"rollout\.gpu_memory_utilization must be in \(0, 1\]"),
        ({"kv_cache_memory_bytes": 0}, r"rollout\.kv_cache_memory_bytes must be >= 1, got 0"),
        ({"num_embedders": 0}, r"rollout\.num_embedders must be >= 1, got 0"),
        ({"gpus_per_embedder": -1}, r"rollout\.gpus_per_embedder must be >= 0, got -1"),
    ],
)
def test_rollout_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RolloutConfig(**kwargs)


def test_ray_config_validation():
    assert RayConfig(address="auto").address == "auto"
    with pytest.raises(ConfigError, match=r"ray\.num_cpus must be >= 1, got 0"):
        RayConfig(num_cpus=0)
    with pytest.raises(ConfigError, match=r"ray\.address must not be empty"):
        RayConfig(address="")


def test_async_steps_is_zero_or_one_and_refuses_colocated_engines_that_sleep_during_the_update():
    assert load_config(None, ["run.async_steps=1"]).run.async_steps == 1
    with pytest.raises(ConfigError, match=r"run\.async_steps must be in \[0, 1\], got 2"):
        load_config(None, ["run.async_steps=2"])
    with pytest.raises(ConfigError, match=r"run\.async_steps=1 samples on the engines while the learner updates"):
        load_config(None, ["run.async_steps=1", "ray.colocate=true"])


def test_round_trip_dump_then_load_is_identity(tmp_path):
    cfg = load_config(
        None,
        [
            "rollout.n=8",
            "learner.lr=3e-7",
            "rewards.weights.wer=2.5",
            "ray.address=auto",
            "learner.lora.target_modules=[q_proj]",
            "model.prompt=Transcribe: 'x'",
            "learner.adam_betas=[0.8,0.9]",
            "data.train_manifest=data/train 1.jsonl",
        ],
    )
    path = tmp_path / "out" / "config.yaml"
    save_config(cfg, path)
    assert load_config(str(path), []) == cfg
    assert dump_config(load_config(str(path), [])) == dump_config(cfg)
    assert [p for p in os.listdir(path.parent)] == ["config.yaml"]  # no temp file left behind
    mask = os.umask(0o027)
    try:
        save_config(cfg, path)  # the mode open() would give
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(mask)
    assert load_config(_write(tmp_path, dump_config(TrainConfig())), []) == TrainConfig()


def test_train_config_is_frozen_and_builds_sections_from_mappings():
    cfg = TrainConfig(rollout={"n": 8})
    assert cfg.rollout == RolloutConfig(n=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rollout = RolloutConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rollout.n = 2
    with pytest.raises(ConfigError, match=r"'rollout\.nn'; did you mean rollout\.n"):
        TrainConfig(rollout={"nn": 8})


def test_weights_mapping_is_copied_not_shared():
    weights = {"wer": 1.0}
    cfg = TrainConfig(rewards={"weights": weights})
    weights["wer"] = 9.0
    assert cfg.rewards.weights == {"wer": 1.0}


def test_validate_reward_names_against_registry():
    cfg = load_config(None, ["rewards.weights.wr=1"])
    validate_reward_names(load_config(None, []), ["wer", "keyword", "hallucination", "language"])
    with pytest.raises(
        ConfigError,
        match=r"rewards\.weights\.wr: unknown reward 'wr'; did you mean "
        r"rewards\.weights\.wer\?",
    ):
        validate_reward_names(cfg, ["wer", "keyword", "hallucination", "language"])


def test_config_pickles_for_ray_and_replace_revalidates():
    import pickle

    cfg = load_config(None, ["rollout.n=8", "rewards.weights.wer=3"])
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert dataclasses.replace(cfg.rollout, n=6).n == 6
    with pytest.raises(ConfigError, match=r"rollout\.top_p"):
        dataclasses.replace(cfg.rollout, top_p=2.0)


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" mapping: each level maps ``width`` keys to the level below (width**levels nodes)."""
    lines = ["l0: &l0 {" + ", ".join(f"k{i}: x" for i in range(width)) + "}"]
    for n in range(1, levels):
        lines.append(f"l{n}: &l{n} {{" + ", ".join(f"k{i}: *l{n - 1}" for i in range(width)) + "}")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_fails_fast_with_a_config_error_naming_file_and_line(tmp_path):

    text = _alias_bomb()
    assert len(text.encode()) < 800  # a few hundred bytes, 9**9 nodes if expanded
    path = _write(tmp_path, text, "bomb.yaml")
    # refused at the first anchor, before any alias is expanded (expanding would not finish: pytest-timeout)
    with pytest.raises(ConfigError, match=r"bomb\.yaml:1: invalid YAML: a YAML anchor \(&l0\) is not allowed"):
        load_config(path, [])


def test_yaml_anchors_and_aliases_are_refused_in_files_and_overrides_but_ampersands_in_values_load(tmp_path):
    alias = _write(tmp_path, "run:\n  steps: 3\n  seed: *s\n", "alias.yaml")
    with pytest.raises(ConfigError, match=r"alias\.yaml:3: invalid YAML: a YAML alias \(\*s\) is not allowed"):
        load_config(alias, [])
    with pytest.raises(ConfigError, match=r"override .*a YAML anchor \(&w\) is not allowed"):
        load_config(None, ["rewards.weights={wer: &w 1, keyword: *w}"])
    ok = _write(tmp_path, "run:\n  steps: 3\n  out_dir: 'runs/a&b*c'\n", "ok.yaml")
    assert load_config(ok, []).run.out_dir == "runs/a&b*c"


def test_log_rollouts_accepts_all_off_every_n_and_names_the_key_otherwise():
    from funrl.config import ConfigError, load_config

    assert load_config(None, ["run.log_rollouts=every_10"]).run.log_rollouts == "every_10"
    with pytest.raises(ConfigError, match="run.log_rollouts must be all, off or every_N"):
        load_config(None, ["run.log_rollouts=sometimes"])


def test_lang_per_step_loads_as_counts_and_its_quota_plus_noise_must_leave_room_in_the_batch():
    cfg = load_config(None, ["data.lang_per_step.zh=4", "data.noise_per_step=2", "run.clips_per_step=8"])
    assert cfg.data.lang_per_step == {"zh": 4}
    with pytest.raises(ConfigError, match=r"data\.lang_per_step must map language codes to counts >= 1"):
        load_config(None, ["data.lang_per_step.zh=0"])
    with pytest.raises(ConfigError, match=r"plus data\.lang_per_step.s counts \(6\) must be smaller") as info:
        load_config(None, ["data.lang_per_step.zh=6", "data.noise_per_step=2", "run.clips_per_step=8"])
    assert info.value.key == "data.lang_per_step"
