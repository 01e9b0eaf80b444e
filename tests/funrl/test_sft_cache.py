"""The frozen-encoder cache of `funrl.sft` (optim.cache_encoder): cached states and the audio embeddings built
from them equal the uncached path, pairs join in time, and configs it cannot serve are refused by key."""

from __future__ import annotations

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
