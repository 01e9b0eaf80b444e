"""`load_prompt_embedder`: the frontend and the LLM's input embedding table without the LLM, giving the very prompts
the whole model gives, for every registered model type."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from policy.models import get_adapter, load_audio_llm, supported_model_types
from policy.models.hf_audio_families import LEGACY_AUDIO_NAMES
from policy.models.prompt_embedder import PromptEmbedder, load_prompt_embedder, read_tensors

CONTEXTS = ["hotwords: Zurich", None]


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 7213)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prompt_embedder")
    out = {name: get_adapter(name).build_tiny(root / name) for name in supported_model_types()}
    out["encoder_adapter_llm/whisper"] = get_adapter("encoder_adapter_llm").build_tiny(
        root / "whisper", encoder="whisper", llm="llama"
    )
    return out


@torch.no_grad()
def _prompts(model, waves) -> list[torch.Tensor]:
    return model.build_prompt_embeds(model.embed_audio(model.audio_features(waves)), CONTEXTS)


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", [*supported_model_types(), "encoder_adapter_llm/whisper"])
def test_frontend_only_load_gives_the_whole_models_prompts_and_holds_no_decoder_layer(name, folders, waves):
    full = load_audio_llm(folders[name])
    part = load_prompt_embedder(folders[name])
    assert isinstance(part, PromptEmbedder)
    for a, b in zip(_prompts(full, waves), _prompts(part, waves), strict=True):
        assert torch.equal(a, b)
    table = full.llm.get_input_embeddings().weight
    assert _numel(part) == _numel(full.frontend) + table.numel()  # frontend + table: no layer, no head
    assert torch.equal(part.get_input_embeddings().weight, table)


def test_frontend_only_load_reads_a_transformers5_layout_and_a_sharded_checkpoint(folders, waves, tmp_path):
    """The Hub's Qwen2-Audio names (``audio_tower.*``) renamed to transformers 5's (``model.audio_tower.*``) and
    the weights split over two shards with an index: the same prompts."""
    source = folders["qwen2_audio"]
    folder = tmp_path / "t5"
    folder.mkdir()
    for path in source.iterdir():
        if path.is_file() and not path.name.endswith(".safetensors"):
            (folder / path.name).write_bytes(path.read_bytes())
    renamed = {}
    for key, tensor in load_file(str(source / "model.safetensors")).items():
        new, old = next(((n, o) for n, o in LEGACY_AUDIO_NAMES if key.startswith(o)), ("", ""))
        renamed[new + key[len(old) :]] = tensor
    keys = sorted(renamed)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for shard, names in shards.items():
        save_file({k: renamed[k] for k in names}, str(folder / shard))
    weight_map = {k: shard for shard, names in shards.items() for k in names}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert "model.audio_tower.conv1.weight" in weight_map
    full, part = load_audio_llm(source), load_prompt_embedder(folder)
    for a, b in zip(_prompts(full, waves), _prompts(part, waves), strict=True):
        assert torch.equal(a, b)


def test_read_tensors_names_the_folder_and_the_missing_tensor(folders):
    llm = folders["encoder_adapter_llm"] / "llm"
    assert read_tensors(llm, ["model.embed_tokens.weight"])["model.embed_tokens.weight"].dim() == 2
    with pytest.raises(KeyError, match=r"llm: the checkpoint has no tensor model\.no_such\.weight"):
        read_tensors(llm, ["model.no_such.weight"])


def test_prompt_option_replaces_the_instruction_as_in_the_whole_model(folders, waves):
    folder = folders["encoder_adapter_llm"]
    full = load_audio_llm(folder, prompt="Write down what you hear.")
    part = load_prompt_embedder(folder, prompt="Write down what you hear.")
    assert part.template == full.template and "Write down what you hear." in part.template.suffix
    for a, b in zip(_prompts(full, waves), _prompts(part, waves), strict=True):
        assert torch.equal(a, b)


def test_an_adapter_without_load_frontend_falls_back_to_the_whole_model(folders, waves, monkeypatch):
    """A plugin adapter with only ``load``: the embedder keeps the parts of the whole model."""
    adapter = get_adapter("encoder_adapter_llm")
    monkeypatch.delattr(type(adapter), "load_frontend")
    part = load_prompt_embedder(folders["encoder_adapter_llm"])
    full = load_audio_llm(folders["encoder_adapter_llm"])
    for a, b in zip(_prompts(full, waves), _prompts(part, waves), strict=True):
        assert torch.equal(a, b)
