"""The frozen-encoder cache of `funrl.sft` (optim.cache_encoder): cached states and the audio embeddings built
from them equal the uncached path, pairs join in time, and configs it cannot serve are refused by key."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from funrl.config import ConfigError
from funrl.sft_cache import EncoderCache, cached_audio_embeds
from funrl.sft_config import load_sft_config
from policy.models import get_adapter, load_audio_llm


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = get_adapter("encoder_adapter_llm").build_tiny(tmp_path_factory.mktemp("w") / "m", encoder="whisper")
    return load_audio_llm(folder).eval()


@pytest.fixture(scope="module")
def waves():
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8000, 20000, 12345, 16000, 4000)]


def test_cached_states_equal_each_clip_encoded_alone_whatever_batch_it_was_in(model, waves):
    cache = EncoderCache(model, waves, batch_size=3)  # batches mix lengths: padding must not leak in
    with torch.no_grad():
        for w in waves:
            enc, lengths = model.frontend.encode(model.audio_features([w]))
            torch.testing.assert_close(cache.states[id(w)], enc[0, : int(lengths[0])], atol=1e-5, rtol=1e-5)


def test_embeddings_from_the_cache_equal_the_model_path_per_clip(model, waves):
    cache = EncoderCache(model, waves)
    enc, lengths = cache.batch([(w,) for w in waves], 0, np.random.default_rng(0))
    with torch.no_grad():
        got = cached_audio_embeds(model, enc, lengths)
        want = [model.embed_audio(model.audio_features([w]))[0] for w in waves]  # loop, one clip at a time
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_a_pair_is_its_two_clips_states_joined_in_time_and_masks_zero_whole_frames(model, waves):
    cache = EncoderCache(model, waves)
    a, b = waves[0], waves[2]
    enc, lengths = cache.batch([(a, b), (b,)], 0, np.random.default_rng(0))
    n_a, n_b = cache.states[id(a)].shape[0], cache.states[id(b)].shape[0]
    assert lengths.tolist() == [n_a + n_b, n_b] and enc.shape[1] == n_a + n_b
    assert torch.equal(enc[0], torch.cat([cache.states[id(a)], cache.states[id(b)]]))
    assert torch.equal(enc[1, n_b:], torch.zeros_like(enc[1, n_b:]))  # padding
    masked, _ = cache.batch([(a, b)], 3, np.random.default_rng(1))
    zeroed = (masked[0] == 0).all(-1) & ~(enc[0] == 0).all(-1)
    assert 0 < int(zeroed.sum()) <= 3 * 5  # at most three spans of up to 5 frames
    assert torch.equal(masked[0][~zeroed], enc[0][~zeroed])
    with pytest.raises(KeyError, match=r"batch items \[0\]"):
        cache.batch([(np.zeros(8000, np.float32),)], 0, np.random.default_rng(0))


@pytest.mark.parametrize(
    "extra",
    [["optim.freeze_encoder=false"], ["optim.encoder_steps=10"], ["optim.spec_freq_masks=2"]],
)
def test_cache_needs_an_encoder_frozen_from_the_start_and_reusable_inputs(extra):
    base = ["data.train_manifest=a.jsonl", "optim.cache_encoder=true", "optim.freeze_encoder=true"]
    with pytest.raises(ConfigError, match="optim.cache_encoder"):
        load_sft_config(None, [*base, "model.ctc=true", *extra])
    assert load_sft_config(None, base).optim.cache_encoder


@pytest.mark.parametrize("n_top", [0, 1, 2])
def test_states_below_the_top_layers_then_the_top_layers_are_the_whole_encoder(model, waves, n_top):
    encoder = model.frontend.encoder
    feats = model.audio_features(waves)  # a padded batch of five lengths
    with torch.no_grad():
        want, want_len = encoder(feats.feats, feats.lengths)
        below, lengths = encoder.below_top(feats.feats, feats.lengths, n_top)
        got, got_len = encoder.top(below, lengths, n_top)
    assert torch.equal(got_len, want_len)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_embeddings_from_a_cache_below_the_top_layer_equal_the_model_path_per_clip(model, waves):
    cache = EncoderCache(model, waves, batch_size=2, top_layers=1)
    enc, lengths = cache.batch([(w,) for w in waves], 0, np.random.default_rng(0))
    with torch.no_grad():
        got = cached_audio_embeds(model, enc, lengths, cache.top_layers)
        want = [model.embed_audio(model.audio_features([w]))[0] for w in waves]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_encoder_top_layers_train_the_last_layer_and_final_norm_beside_the_adapter(tmp_path, waves):
    from funrl.sft_model import set_trainable

    folder = get_adapter("encoder_adapter_llm").build_tiny(tmp_path / "m", encoder="whisper")
    model = load_audio_llm(folder)
    m = load_sft_config(
        None, ["data.train_manifest=a.jsonl", "model.train=adapter", "model.encoder_top_layers=1", "optim.ctc_weight=0"]
    )
    set_trainable(model, m.model)
    last = len(model.frontend.encoder.whisper.layers) - 1
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    top = {f"frontend.encoder.whisper.layers.{last}.", "frontend.encoder.whisper.layer_norm."}
    assert {n for n in names if "encoder" in n} == {
        n for n, _ in model.named_parameters() if any(n.startswith(t) for t in top)
    }
    assert any(n.startswith("frontend.adapter.") for n in names)
    cache = EncoderCache(model, waves[:2], top_layers=1)
    enc, lengths = cache.batch([(waves[0],), (waves[1],)], 0, np.random.default_rng(0))
    sum(e.square().sum() for e in cached_audio_embeds(model, enc, lengths, 1)).backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None and bool(p.grad.abs().sum() > 0)) == (n in names and "lora" not in n), n


def test_encoder_top_layers_is_refused_with_the_whole_encoder_training_and_on_a_conformer_encoder(tmp_path):
    from funrl.sft_model import set_trainable

    with pytest.raises(ConfigError, match="model.encoder_top_layers") as err:
        load_sft_config(None, ["data.train_manifest=a.jsonl", "model.train=all", "model.encoder_top_layers=1"])
    assert err.value.key == "model.encoder_top_layers"
    frozen = ["data.train_manifest=a.jsonl", "model.encoder_top_layers=1", "optim.freeze_encoder=true"]
    assert load_sft_config(None, frozen).model.encoder_top_layers == 1  # train=all, the encoder frozen but its top
    conformer = load_audio_llm(get_adapter("encoder_adapter_llm").build_tiny(tmp_path / "c"))
    m = load_sft_config(
        None, ["data.train_manifest=a.jsonl", "model.train=adapter", "model.encoder_top_layers=1", "optim.ctc_weight=0"]
    )
    with pytest.raises(ValueError, match=r"model.encoder_top_layers=1 .* ConformerEncoder"):
        set_trainable(conformer, m.model)
    whisper = load_audio_llm(get_adapter("encoder_adapter_llm").build_tiny(tmp_path / "w", encoder="whisper"))
    too_many = replace(m.model, encoder_top_layers=len(whisper.frontend.encoder.whisper.layers) + 1)
    with pytest.raises(
        ConfigError, match=r"model.encoder_top_layers=\d+, but .* set model.encoder_top_layers to at most"
    ) as too_deep:
        set_trainable(whisper, too_many)
    assert too_deep.value.key == "model.encoder_top_layers"  # funrl.sft exits 2, as for any config error


def test_encoder_top_layers_get_their_own_optimizer_groups_at_the_scaled_learning_rate(tmp_path):
    from funrl.sft import _optimizer
    from funrl.sft_model import encoder_top_parameters, set_trainable

    model = load_audio_llm(get_adapter("encoder_adapter_llm").build_tiny(tmp_path / "m", encoder="whisper"))
    over = ["data.train_manifest=a.jsonl", "model.train=adapter", "model.encoder_top_layers=1", "optim.ctc_weight=0"]
    cfg = load_sft_config(None, [*over, "optim.encoder_lr_scale=0.25"])
    set_trainable(model, cfg.model)
    top = encoder_top_parameters(model, 1)
    opt = _optimizer(model, cfg.optim, None, top)
    scaled = {id(p) for g in opt.param_groups if g["lr_scale"] == 0.25 for p in g["params"]}
    assert scaled == {id(p) for p in top}
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trained  # each once: AdamW refuses repeats
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0, 0.01, 0.0]
