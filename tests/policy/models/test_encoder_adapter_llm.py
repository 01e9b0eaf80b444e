"""encoder_adapter_llm: length rules, padding invariance, CTC head, folder round trip, plain HF llm/ folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

from policy.models import FeatureBatch, load_audio_llm
from policy.models.conformer import EncoderConfig
from policy.models.encoder_adapter_llm import AdapterConfig, EncoderAdapterFrontend
from policy.models.features import FbankConfig

# T fbank frames -> (encoder frames = ceil(ceil(T/2)/2), adapter frames = ceil(enc/2)), by hand
LENGTHS = {1: (1, 1), 2: (1, 1), 3: (1, 1), 5: (2, 1), 7: (2, 1), 9: (3, 2), 17: (5, 3), 98: (25, 13), 100: (25, 13)}


@pytest.fixture(scope="module")
def frontend() -> EncoderAdapterFrontend:
    torch.manual_seed(0)
    enc = EncoderConfig(d_model=32, n_heads=2, n_layers=2, ffn_dim=64, conv_kernel=5, subsample_channels=4)
    return EncoderAdapterFrontend(
        FbankConfig(), enc, AdapterConfig(hidden_size=48, llm_hidden_size=24), ctc_vocab_size=11
    ).eval()


def _batch(lengths: list[int], seed: int = 0) -> FeatureBatch:
    g = torch.Generator().manual_seed(seed)
    feats = torch.zeros(len(lengths), max(lengths), 80)
    for i, n in enumerate(lengths):
        feats[i, :n] = torch.randn(n, 80, generator=g)
    return FeatureBatch(feats, torch.tensor(lengths))


def test_output_lengths_follow_ceil_rules(frontend):
    lengths = list(LENGTHS)
    batch = _batch(lengths)
    enc, enc_len = frontend.encode(batch)
    assert enc_len.tolist() == [LENGTHS[t][0] for t in lengths]
    assert enc.shape == (len(lengths), 25, 32)
    out = frontend(batch)
    assert [tuple(o.shape) for o in out] == [(LENGTHS[t][1], 24) for t in lengths]


def test_padded_batch_equals_each_clip_alone(frontend):
    lengths = [100, 37, 9, 64]
    batch = _batch(lengths, seed=1)
    together = frontend(batch)
    for i, n in enumerate(lengths):
        alone = frontend(FeatureBatch(batch.feats[i : i + 1, :n], torch.tensor([n])))[0]
        torch.testing.assert_close(together[i], alone, rtol=0, atol=1e-5)


def test_ctc_head_gives_vocab_logits_per_encoder_frame(frontend):
    logits, lengths = frontend.ctc_logits(_batch([17, 9]))
    assert logits.shape == (2, 5, 11) and lengths.tolist() == [5, 3]


def test_tiny_model_audio_to_prompt_shapes(tiny_model_dir):
    model = load_audio_llm(tiny_model_dir)
    waves = [np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 8000)]
    feats = model.audio_features(waves)
    assert feats.lengths.tolist() == [98, 48]  # 1 + (N - 400) // 160
    audio = model.embed_audio(feats)
    assert [a.shape[0] for a in audio] == [13, 6]  # 98 -> 25 -> 13; 48 -> 12 -> 6
    assert all(a.shape[1] == model.llm.config.hidden_size for a in audio)


def test_save_load_round_trip_gives_identical_outputs(tiny_model_dir, tmp_path):
    model = load_audio_llm(tiny_model_dir)
    model.save(tmp_path / "copy")
    again = load_audio_llm(tmp_path / "copy")
    waves = [np.random.default_rng(1).standard_normal(12000).astype(np.float32) * 0.1]
    with torch.no_grad():
        a = model.build_prompt_embeds(model.embed_audio(model.audio_features(waves)), ["hi"])
        b = again.build_prompt_embeds(again.embed_audio(again.audio_features(waves)), ["hi"])
        ids = torch.tensor([[5, 6, 7, 8]])
        assert torch.equal(a[0], b[0])
        assert torch.equal(model.sequence_logprobs(a, ids), again.sequence_logprobs(b, ids))
    assert again.template == model.template
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["config.json", "frontend.safetensors", "llm"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_save_replaces_existing_folder(tiny_model_dir, tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    load_audio_llm(tiny_model_dir).save(target)
    assert not (target / "stale.txt").exists() and (target / "config.json").is_file()


def test_llm_folder_is_a_plain_hf_causal_lm_with_tokenizer(tiny_family_dir):
    llm_dir = tiny_family_dir / "llm"
    cfg = json.loads((llm_dir / "config.json").read_text())
    lm = transformers.AutoModelForCausalLM.from_pretrained(llm_dir, local_files_only=True)
    tok = transformers.AutoTokenizer.from_pretrained(llm_dir, local_files_only=True)
    assert cfg["architectures"] == [type(lm).__name__]
    assert len(tok) == cfg["vocab_size"] and tok.eos_token == "<|im_end|>"


def test_llm_state_dict_names_are_the_hf_checkpoint_names(tiny_family_dir):
    model = load_audio_llm(tiny_family_dir)
    names = dict(model.llm_state_dict())
    saved = load_file(str(tiny_family_dir / "llm" / "model.safetensors"))
    tied = model.llm.config.tie_word_embeddings
    assert set(names) - {"lm_head.weight"} == set(saved) - {"lm_head.weight"}
    assert ("lm_head.weight" in saved) == (not tied)  # tied checkpoints omit the head, as HF writes them
    assert "model.layers.0.self_attn.q_proj.weight" in names and "lm_head.weight" in names
    for k, v in saved.items():
        assert torch.equal(names[k], v), k
    assert len(model.decoder_layers()) == model.llm.config.num_hidden_layers


def test_bad_encoder_key_error_names_file_and_key(tiny_model_dir, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["encoder"]["d_modle"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json: encoder: unknown keys \['d_modle'\]"):
        load_audio_llm(folder)


def test_missing_frontend_weights_error_names_file(tiny_model_dir, tmp_path):
    folder = tmp_path / "nofront"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "frontend.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"frontend\.safetensors is missing"):
        load_audio_llm(folder)


def test_cmvn_statistics_apply_and_survive_save_load(tmp_path):
    from policy.models import get_adapter
    from policy.models.features import fbank

    folder = get_adapter("encoder_adapter_llm").build_tiny(tmp_path / "c", cmvn=True, ctc=False)
    model = load_audio_llm(folder)
    assert model.frontend.ctc is None
    mean, std = np.full(80, 3.0, np.float32), np.full(80, 2.0, np.float32)
    model.frontend.set_cmvn(mean, std)
    wave = np.random.default_rng(4).standard_normal(4000).astype(np.float32) * 0.1
    np.testing.assert_allclose(model.audio_features([wave]).feats[0].numpy(), (fbank(wave) - 3.0) / 2.0, rtol=1e-6)
    model.save(tmp_path / "c2")
    again = load_audio_llm(tmp_path / "c2")
    assert torch.equal(again.audio_features([wave]).feats, model.audio_features([wave]).feats)
    with pytest.raises(ValueError, match=r"must have shape \(80,\)"):
        model.frontend.set_cmvn(np.zeros(3), np.ones(3))
