"""transformers audio-LLM adapters (policy.models.hf_audio_llm) against the HF models' own forward."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModelForCausalLM  # noqa: E402

from policy.models import hf_audio_llm as H  # noqa: E402

FAMILY_NAMES = ["fun_asr_nano", "qwen2_audio", "qwen3_asr", "voxtral"]
VOCAB, AUDIO_ID = 96, 5
# 16000 samples and 7213 samples: hand-computed audio token counts per family
#  fun_asr_nano: Kaldi frames 1 + (N - 400) // 160 = 98, 43 -> LFR ceil(/6) = 17, 8
#  qwen2_audio: Whisper frames ceil(N / 160) = 100, 46 -> conv (L-1)//2+1 = 50, 23 -> pool (L-2)//2+1 = 25, 11
#  qwen3_asr: clips < 8000 samples are zero-padded to 8000 -> 100, 50 frames -> 3x (L-1)//2+1 -> 13, 7
#  voxtral: the whole 30 s window, 1500 encoder frames / 4 -> 375, 375
EXPECTED_LENGTHS = {"fun_asr_nano": [17, 8], "qwen2_audio": [25, 11], "qwen3_asr": [13, 7], "voxtral": [375, 375]}


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    return [(0.1 * rng.standard_normal(16000) + 0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32),
            (0.1 * rng.standard_normal(7213)).astype(np.float32)]


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hf_audio")
    return {name: str(H.save_tiny_hf_model(root / name, name, VOCAB, AUDIO_ID, seed=i))
            for i, name in enumerate(FAMILY_NAMES)}


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_audio_embeddings_have_hand_computed_lengths(tiny_folders, waves, name):
    frontend, llm = H.load_hf_parts(tiny_folders[name])
    with torch.no_grad():
        embeds = frontend(frontend.extract(waves))
    assert [e.shape[0] for e in embeds] == EXPECTED_LENGTHS[name]
    assert all(e.shape[1] == llm.config.hidden_size for e in embeds)


def _ours_logprobs(frontend, llm, waves, prefix, suffix, completions):
    """Splice [prefix | audio | suffix | completion] by hand and read log p(completion) from the LM view."""
    embed_tokens = llm.get_input_embeddings()
    out = []
    with torch.no_grad():
        audio = frontend(frontend.extract(waves))
        for a, comp in zip(audio, completions):
            x = torch.cat([embed_tokens(torch.tensor(prefix)), a, embed_tokens(torch.tensor(suffix + comp))])[None]
            logp = llm(inputs_embeds=x).logits.log_softmax(-1)[0]
            start = len(prefix) + a.shape[0] + len(suffix) - 1
            out.append(logp[start:start + len(comp)].gather(-1, torch.tensor(comp)[:, None])[:, 0])
    return audio, out


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_spliced_logprobs_equal_hf_forward_with_audio_placeholders(tiny_folders, waves, name):
    """Our frontend + LM view vs an independently loaded HF model fed input_ids with audio placeholders."""
    frontend, llm = H.load_hf_parts(tiny_folders[name])
    family = H.FAMILIES[name]
    reference = H.load_hf_model(tiny_folders[name], family)
    prefix, suffix, completions = [10, 11, 12], [13, 14], [[20, 21, 22, 23], [30, 31]]
    audio, ours = _ours_logprobs(frontend, llm, waves, prefix, suffix, completions)
    seqs = [prefix + [AUDIO_ID] * a.shape[0] + suffix + c for a, c in zip(audio, completions)]
    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], attn[i, : len(s)] = torch.tensor(s), 1
    with torch.no_grad():
        logp = reference(input_ids=ids, attention_mask=attn, **frontend.extract(waves)).logits.log_softmax(-1)
    for i, (a, comp) in enumerate(zip(audio, completions)):
        start = len(prefix) + a.shape[0] + len(suffix) - 1
        ref = logp[i, start:start + len(comp)].gather(-1, torch.tensor(comp)[:, None])[:, 0]
        assert torch.allclose(ours[i], ref, atol=1e-5, rtol=0), (ours[i], ref)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_lm_view_shares_hf_tensors_and_exports_plain_causal_lm(tiny_folders, tmp_path, name):
    frontend, llm = H.load_hf_parts(tiny_folders[name])
    family = H.FAMILIES[name]
    assert type(llm).__name__ == family.lm_class
    names = dict(llm.named_parameters())
    assert "model.embed_tokens.weight" in names and "model.layers.0.self_attn.q_proj.weight" in names
    assert not any(p.is_meta for p in llm.parameters())
    llm.save_pretrained(tmp_path / "lm")
    config = json.loads((tmp_path / "lm" / "config.json").read_text())
    assert config["architectures"] == [family.lm_class]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "lm", local_files_only=True).eval()
    assert type(reloaded).__name__ == family.lm_class
    x = torch.randn(2, 7, llm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(inputs_embeds=x).logits, llm(inputs_embeds=x).logits)


@pytest.mark.parametrize("name", ["fun_asr_nano", "qwen2_audio"])
def test_hf_folder_round_trip_keeps_every_weight(tiny_folders, tmp_path, name):
    frontend, llm = H.load_hf_parts(tiny_folders[name])
    named = {f"frontend.{k}": v for k, v in frontend.state_dict().items()}
    named.update({f"llm.{k}": v for k, v in llm.state_dict().items()})
    tied = llm.config.tie_word_embeddings
    H.save_hf_folder(tmp_path / "copy", tiny_folders[name], named, H.FAMILIES[name], tied=tied)
    original = H.load_hf_model(tiny_folders[name], H.FAMILIES[name]).state_dict()
    copied = H.load_hf_model(tmp_path / "copy", H.FAMILIES[name]).state_dict()
    assert original.keys() == copied.keys()
    assert all(torch.equal(original[k], copied[k]) for k in original)


def test_pickle_only_folder_is_refused(tiny_folders, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((__import__("pathlib").Path(tiny_folders["qwen2_audio"]) / "config.json")
                                        .read_text())
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"only pickle weights \(pytorch_model.bin\).*safetensors only"):
        H.load_hf_parts(folder)


def test_unsupported_model_type_lists_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ValueError, match=r"model_type 'whisper' is not a supported.*fun_asr_nano, qwen2_audio"):
        H.load_hf_parts(tmp_path)


def test_clip_longer_than_the_fixed_window_is_refused(tiny_folders):
    frontend, _ = H.load_hf_parts(tiny_folders["qwen2_audio"])
    with pytest.raises(ValueError, match=r"clip 1 has 480001 samples .* at most 480000 samples"):
        frontend.extract([np.zeros(16000, np.float32), np.zeros(480001, np.float32)])
