"""Weight names of the checkpoints `HFAudioAdapter.save` writes (policy.models.hf_audio_llm): the layout of the
folder the model came from (Hub Qwen2-Audio / Voxtral: ``audio_tower.*``, ``language_model.model.*``;
transformers 5 names: ``model.audio_tower.*``, ``model.language_model.*``), transformers loads the result with
no missing / unexpected weights and the same logits, and vLLM 0.32's loaders take the names.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers
from safetensors.torch import load_file, save_file

from policy.models import hf_audio_llm as H
from policy.models import load_audio_llm
from policy.models.hf_audio_tiny import build_tiny_hf_audio_llm

FAMILY_NAMES = ["fun_asr_nano", "qwen2_audio", "qwen3_asr", "voxtral", "qwen2_5_omni_thinker", "qwen2_5_omni"]
LEGACY = ("audio_tower.", "multi_modal_projector.", "language_model.model.", "language_model.lm_head.")
TRANSFORMERS5 = ("model.audio_tower.", "model.multi_modal_projector.", "model.language_model.", "lm_head.")
# every key of the family's Hub checkpoints starts with one of these
HUB_PREFIXES = {
    "qwen2_audio": LEGACY,
    "voxtral": LEGACY,
    "fun_asr_nano": TRANSFORMERS5,
    "qwen3_asr": TRANSFORMERS5,
    "qwen2_5_omni_thinker": ("audio_tower.", "model.", "lm_head.", "visual."),
    "qwen2_5_omni": ("thinker.audio_tower.", "thinker.model.", "thinker.lm_head.", "thinker.visual."),
}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hf_names")
    return {name: build_tiny_hf_audio_llm(root / name, name, seed=i) for i, name in enumerate(FAMILY_NAMES)}


def _load_perturbed(folder):
    """The model in ``folder`` with every parameter moved, so that saved weights must come from the model."""
    model = load_audio_llm(folder)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.01 * (i % 7 + 1))
    return model


def _hf_load(folder, family):
    kwargs = {}
    if family.sub_config:  # the thinker of a full Qwen2.5-Omni folder
        kwargs["config"] = getattr(transformers.AutoConfig.from_pretrained(folder), family.sub_config)
    return getattr(transformers, family.model_class).from_pretrained(
        folder, local_files_only=True, output_loading_info=True, **kwargs
    )


def _check_transformers_loads_the_model(folder, model, family):
    """transformers loads ``folder`` strictly, with ``model``'s weights and its text logits."""
    hf, info = _hf_load(folder, family)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    named = {f"frontend.{k}": v for k, v in model.frontend.state_dict().items()}
    named.update({f"llm.{k}": v for k, v in model.llm_state_dict()})
    expected = H.to_hf_names(named, family, tied=False, layout="transformers5")  # the HF modules' own names
    state = hf.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(state[name[len(family.save_prefix) :]], tensor), name
    ids = torch.tensor([[5, 9, 17, 33, 2, 41]])
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(input_ids=ids).logits, model.llm(input_ids=ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_tiny_checkpoints_have_the_hub_names(tiny_dirs, name):
    keys = H.checkpoint_keys(tiny_dirs[name])
    assert keys and all(k.startswith(HUB_PREFIXES[name]) for k in keys)
    assert not any(".model.model." in k for k in keys)  # what transformers 5.19's save_pretrained writes
    assert H.checkpoint_layout(tiny_dirs[name], H.FAMILIES[name]) == H.FAMILIES[name].hub_layout


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_save_writes_the_source_names_and_transformers_loads_it_identically(tiny_dirs, tmp_path, name):
    model = _load_perturbed(tiny_dirs[name])
    model.save(tmp_path / "out")
    assert H.checkpoint_keys(tmp_path / "out") == H.checkpoint_keys(tiny_dirs[name])
    _check_transformers_loads_the_model(tmp_path / "out", model, H.FAMILIES[name])
    again = load_audio_llm(tmp_path / "out").state_dict()
    assert again.keys() == model.state_dict().keys()
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["qwen2_audio", "voxtral"])
def test_a_source_with_transformers5_names_is_saved_with_them(tiny_dirs, tmp_path, name):
    family = H.FAMILIES[name]
    source = shutil.copytree(tiny_dirs[name], tmp_path / "source")
    weights = load_file(source / "model.safetensors")
    to_new = {new: old for old, new in family.legacy_names}
    renamed = {next((to_new[p] + k[len(p) :] for p in to_new if k.startswith(p)), k): v for k, v in weights.items()}
    assert all(k.startswith(TRANSFORMERS5) for k in renamed)
    save_file(renamed, str(source / "model.safetensors"), metadata={"format": "pt"})
    assert H.checkpoint_layout(source, family) == "transformers5"
    model = _load_perturbed(source)
    model.save(tmp_path / "out")
    assert H.checkpoint_keys(tmp_path / "out") == sorted(renamed)
    _check_transformers_loads_the_model(tmp_path / "out", model, family)


def test_a_fresh_model_saved_by_transformers_is_saved_with_the_hub_names(tiny_dirs, tmp_path):
    """transformers 5.19's save_pretrained of a Qwen2-Audio model built from its config (not loaded from a folder)
    writes the text weights as language_model.model.model.* (which vLLM refuses); such a folder loads, and FunRL
    saves it under the Hub's names."""
    source = shutil.copytree(tiny_dirs["qwen2_audio"], tmp_path / "source")
    loaded, _ = _hf_load(tiny_dirs["qwen2_audio"], H.FAMILIES["qwen2_audio"])
    hf = transformers.Qwen2AudioForConditionalGeneration(loaded.config)
    hf.load_state_dict(loaded.state_dict())
    hf.save_pretrained(tmp_path / "hf")
    (source / "model.safetensors").unlink()
    shutil.copy(tmp_path / "hf" / "model.safetensors", source / "model.safetensors")
    assert any(k.startswith("language_model.model.model.") for k in H.checkpoint_keys(source))
    model = _load_perturbed(source)
    model.save(tmp_path / "out")
    assert H.checkpoint_keys(tmp_path / "out") == H.checkpoint_keys(tiny_dirs["qwen2_audio"])
    _check_transformers_loads_the_model(tmp_path / "out", model, H.FAMILIES["qwen2_audio"])


def test_a_model_not_loaded_from_a_folder_gets_the_hub_names(tiny_dirs, tmp_path):
    model = _load_perturbed(tiny_dirs["qwen2_audio"])
    model.frontend.source = None
    model.save(tmp_path / "out")
    assert H.checkpoint_keys(tmp_path / "out") == H.checkpoint_keys(tiny_dirs["qwen2_audio"])


def test_layout_of_a_sharded_folder_comes_from_its_index(tmp_path):
    family = H.FAMILIES["qwen2_audio"]
    weight_map = {
        "model.language_model.norm.weight": "model-00001-of-00002.safetensors",
        "model.audio_tower.conv1.weight": "model-00002-of-00002.safetensors",
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert H.checkpoint_keys(tmp_path) == sorted(weight_map)
    assert H.checkpoint_layout(tmp_path, family) == "transformers5"
    assert H.checkpoint_layout(tmp_path, H.FAMILIES["fun_asr_nano"]) == "transformers5"  # its only layout
    assert H.checkpoint_name("model.language_model.norm.weight", family) == "language_model.model.norm.weight"
    assert H.checkpoint_name("lm_head.weight", family, "transformers5") == "lm_head.weight"
    with pytest.raises(ValueError, match="fun_asr_nano: no weight-name layout 'legacy'"):
        H.checkpoint_name("lm_head.weight", H.FAMILIES["fun_asr_nano"], "legacy")


# vLLM 0.32 model classes that serve a family's folder, and the module roots its names must land in
VLLM_MAPPERS = {
    "qwen3_asr": ("qwen3_asr", "Qwen3ASRForConditionalGeneration", ("audio_tower.", "language_model.")),
    "qwen2_5_omni": (
        "qwen2_5_omni_thinker",
        "Qwen2_5OmniThinkerForConditionalGeneration",
        ("audio_tower.", "visual.", "language_model."),
    ),
}


def _vllm_mapper(module: str, cls: str):
    """The class's ``hf_to_vllm_mapper``, rebuilt from its source (importing the Qwen2.5-Omni module needs
    torchvision, which the CPU install lacks)."""
    import ast
    import importlib.util

    from vllm.model_executor.models.utils import WeightsMapper

    path = importlib.util.find_spec(f"vllm.model_executor.models.{module}").origin
    tree = ast.parse(open(path).read())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    call = next(n.value for n in node.body if isinstance(n, ast.Assign) and n.targets[0].id == "hf_to_vllm_mapper")
    return WeightsMapper(**{k.arg: ast.literal_eval(k.value) for k in call.keywords})


@pytest.mark.vllm
@pytest.mark.parametrize("name", sorted(VLLM_MAPPERS))
def test_vllm_weight_mapper_takes_the_saved_names(tiny_dirs, tmp_path, name):
    """The vLLM class's ``hf_to_vllm_mapper`` puts every saved name into one of its modules."""
    module, cls, roots = VLLM_MAPPERS[name]
    mapper = _vllm_mapper(module, cls)
    load_audio_llm(tiny_dirs[name]).save(tmp_path / "out")
    keys = H.checkpoint_keys(tmp_path / "out")
    mapped = [mapper._map_name(k) for k in keys]
    assert all(m is not None and m.startswith(roots) for m in mapped), list(zip(keys, mapped))
    assert any(m.startswith("language_model.model.layers.") for m in mapped)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_loads_the_saved_qwen2_audio_folder(tiny_dirs, tmp_path):
    """vLLM's multimodal Qwen2AudioForConditionalGeneration (strict loader, no name mapping) loads the saved
    folder: its audio embeddings equal ours and its text log-probs equal transformers' (<= 1e-4)."""
    import gc

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    model = _load_perturbed(tiny_dirs["qwen2_audio"])
    model.save(tmp_path / "out")
    rng = np.random.default_rng(0)
    batch = model.audio_features([(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 7213)])
    feats = batch.feats.transpose(1, 2).contiguous()
    ids = model.tokenizer("the cat sat on the mat", add_special_tokens=False)["input_ids"]
    llm = LLM(
        model=str(tmp_path / "out"),
        dtype="float32",
        enforce_eager=True,
        max_model_len=1024,
        kv_cache_memory_bytes=32 << 20,
        seed=0,
    )
    try:
        theirs = llm.apply_model(
            lambda m: [e.cpu() for e in m.embed_multimodal(input_features=feats, feature_attention_mask=batch.mask)]
        )[0]
        out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
    finally:
        del llm
        gc.collect()
    with torch.no_grad():
        ours = model.embed_audio(batch)
        hf, _ = _hf_load(tmp_path / "out", H.FAMILIES["qwen2_audio"])
        logp = hf.eval()(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    assert [e.shape for e in theirs] == [e.shape for e in ours]
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    vllm_lp = torch.tensor([step[t].logprob for step, t in zip(out[0].prompt_logprobs[1:], ids[1:])])
    torch.testing.assert_close(vllm_lp, logp[:-1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0], atol=1e-4, rtol=0)
