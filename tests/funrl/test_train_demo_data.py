"""``data.demo_dir`` of a training config: the manifests it leaves "" are the built-in demo's rl_train / dev /
test splits, built there (only the missing splits) before anything else, so a recipe file runs as written in a
fresh clone (funrl/recipes/slam_asr_grpo.yaml)."""

from __future__ import annotations

import pytest

from funrl.config import ConfigError, load_config
from funrl.demo.build import build_demo_data, built_splits
from funrl.demo.plan import DemoSizes
from funrl.demo.run import with_demo_data
from funrl.train import parse_args, resolve_config


def test_demo_dir_fills_the_empty_manifests_with_the_demo_splits_and_keeps_a_given_one(small_demo_data, tmp_path):
    mine = tmp_path / "mine.jsonl"
    cfg = load_config(
        None, [f"data.demo_dir={small_demo_data.root}", "data.demo_size=small", f"data.test_manifest={mine}"]
    )
    filled = with_demo_data(cfg).data
    assert filled.train_manifest == str(small_demo_data.manifest("rl_train"))
    assert filled.eval_manifest == str(small_demo_data.manifest("dev"))
    assert filled.test_manifest == str(mine)


def test_demo_dir_renders_only_the_missing_splits_beside_those_an_sft_built(tmp_path):
    folder = tmp_path / "demo-small"
    build_demo_data(folder, seed=0, sizes=DemoSizes.small(), splits=("dev",), progress=False)
    dev_before = (folder / "dev.jsonl").read_bytes()
    cfg = load_config(None, [f"data.demo_dir={folder}", "data.demo_size=small", "data.eval_manifest=given.jsonl"])
    filled = with_demo_data(cfg).data
    assert built_splits(folder, 0, DemoSizes.small()) == {"dev", "rl_train", "test"}
    assert filled.train_manifest == str(folder / "rl_train.jsonl") and filled.test_manifest == str(
        folder / "test.jsonl"
    )
    assert (folder / "dev.jsonl").read_bytes() == dev_before
    assert "sft_train" not in {p.stem for p in folder.glob("*.jsonl")}


def test_a_recipe_with_demo_dir_resolves_to_the_demo_manifests(small_demo_data, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data:\n  demo_dir: {small_demo_data.root}\n  demo_size: small\n")
    cfg = resolve_config(parse_args(["--config", str(recipe)]))
    assert cfg.data.train_manifest == str(small_demo_data.manifest("rl_train"))
    assert cfg.data.test_manifest == str(small_demo_data.manifest("test"))


def test_without_demo_dir_or_train_manifest_the_error_names_both_ways(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run:\n  steps: 3\n")
    with pytest.raises(ConfigError, match=r"data\.train_manifest.*data\.demo_dir"):
        resolve_config(parse_args(["--config", str(recipe)]))


def test_an_unknown_demo_size_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"data\.demo_size.*keyword_rich"):
        load_config(None, ["data.demo_size=huge"])


def test_a_train_manifest_alone_on_the_command_line_says_how_to_get_the_demo_recipe_and_model(tmp_path):
    with pytest.raises(ConfigError, match=r"--config funrl/demo/grpo.yaml model.path=funrl/demo/assets/start_model"):
        resolve_config(parse_args([f"data.train_manifest={tmp_path / 'mine.jsonl'}"]))
