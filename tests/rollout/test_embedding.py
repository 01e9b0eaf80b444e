"""rollout.embedding.AudioEmbeddingWorker on a tiny encoder_adapter_llm (Qwen2) checkpoint, checked
against the model layer called directly, one clip at a time."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open

from policy.config import ModelConfig
from policy.messages import Clip
from policy.models import get_adapter, load_audio_llm
from policy.models.audio import load_audio
from rollout.embedding import AudioEmbeddingWorker


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return get_adapter("encoder_adapter_llm").build_tiny(tmp_path_factory.mktemp("emb") / "tiny", llm="qwen2", seed=0)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Five clips of different lengths (one at 8 kHz stereo, so loading resamples), one with context."""
    root = tmp_path_factory.mktemp("wav")
    rng = np.random.default_rng(0)
    out = []
    for i, seconds in enumerate((0.7, 1.9, 0.4, 1.3, 1.0)):
        path = root / f"c{i}.wav"
        if i == 1:
            sf.write(path, (0.1 * rng.standard_normal((int(8000 * seconds), 2))).astype(np.float32), 8000)
        else:
            sf.write(path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
        out.append(Clip(str(path), f"text {i}", "en", context="walrus, gondola" if i == 3 else None))
    return out


@pytest.fixture(scope="module")
def worker(model_dir):
    return AudioEmbeddingWorker(ModelConfig(path=str(model_dir)), batch_size=16)


def direct_embeds(model, clips):
    """The model layer's own path, clip by clip (no padding, no batching)."""
    out = []
    with torch.no_grad():
        for c in clips:
            audio = model.embed_audio(model.audio_features([load_audio(c.audio)]))
            out.append(model.build_prompt_embeds(audio, [c.context])[0])
    return out


def test_prompt_embeds_equal_the_model_layer_computed_directly(worker, model_dir, clips):
    batch = worker.embed(clips)
    assert batch.clips == tuple(clips)
    expected = direct_embeds(load_audio_llm(model_dir).eval(), clips)
    for got, want in zip(batch.prompt_embeds, expected, strict=True):
        assert got.dtype == torch.float32 and got.device.type == "cpu" and not got.requires_grad
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the context is spliced into the prompt: clip 3 is longer than without it
    bare = worker.embed([Clip(clips[3].audio, "", context=None)]).prompt_embeds[0]
    assert batch.prompt_embeds[3].shape[0] > bare.shape[0]


def test_chunking_preserves_order_and_values(worker, model_dir, clips):
    whole = worker.embed(clips)
    small = AudioEmbeddingWorker(ModelConfig(path=str(model_dir)), batch_size=2)
    chunked = small.embed(clips)
    assert chunked.clips == whole.clips
    for a, b in zip(chunked.prompt_embeds, whole.prompt_embeds, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    reordered = small.embed(clips[::-1])
    for a, b in zip(reordered.prompt_embeds, whole.prompt_embeds[::-1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        AudioEmbeddingWorker(ModelConfig(path=str(model_dir)), batch_size=0)


def test_missing_or_corrupt_audio_raises_value_error_naming_the_path(worker, clips, tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(ValueError, match="missing.wav.*not found"):
        worker.embed([clips[0], Clip(str(missing), "x")])
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00 this is not a wav file")
    with pytest.raises(ValueError, match="corrupt.wav.*cannot read"):
        worker.embed([Clip(str(corrupt), "x"), clips[1]])


def test_load_frontend_weights_changes_embeddings_and_rejects_unknown_names(model_dir, clips):
    w = AudioEmbeddingWorker(ModelConfig(path=str(model_dir)))
    before = w.embed(clips[:2]).prompt_embeds
    params = dict(w.model.frontend.named_parameters())
    name = next(n for n in params if n.endswith("weight") and params[n].dim() == 2)
    new = params[name].detach() * 1.5 + 0.01
    w.load_frontend_weights([(name, new)])
    assert torch.equal(dict(w.model.frontend.named_parameters())[name], new)
    after = w.embed(clips[:2]).prompt_embeds
    assert all(not torch.allclose(a, b) for a, b in zip(after, before))
    # the text part of the prompt (LLM embeddings) is unchanged: only the audio positions move
    assert torch.equal(after[0][0], before[0][0])
    snapshot = {n: p.detach().clone() for n, p in w.model.frontend.named_parameters()}
    with pytest.raises(KeyError, match="no_such.weight"):  # a good tensor before it is not applied either
        w.load_frontend_weights([(name, torch.zeros_like(new)), ("no_such.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="shape"):  # would broadcast silently with copy_
        w.load_frontend_weights([(name, torch.zeros(new.shape[-1]))])
    assert all(torch.equal(p, snapshot[n]) for n, p in w.model.frontend.named_parameters())


def test_the_engines_llm_folder_is_untied_with_lm_head(model_dir, tmp_path):
    from rollout.engine_folder import export_engine_llm

    source = json.loads((model_dir / "llm" / "config.json").read_text())
    assert source["tie_word_embeddings"] is True  # the tiny LLM ties its head
    folder = export_engine_llm(ModelConfig(path=str(model_dir)), str(tmp_path / "llm"))
    config = json.loads((tmp_path / "llm" / "config.json").read_text())
    assert folder == str(tmp_path / "llm") and config["tie_word_embeddings"] is False
    with safe_open(str(tmp_path / "llm" / "model.safetensors"), framework="pt") as fh:
        names = set(fh.keys())
        head, embed = fh.get_tensor("lm_head.weight"), fh.get_tensor("model.embed_tokens.weight")
    assert "lm_head.weight" in names and torch.equal(head, embed)
    assert (tmp_path / "llm" / "tokenizer.json").is_file() or (tmp_path / "llm" / "tokenizer_config.json").is_file()


def test_prompt_lengths_equal_the_embedded_prompts_for_clips_over_the_limit_and_none_under_it(worker, clips):
    actual = [e.shape[0] for e in worker.embed(clips).prompt_embeds]
    assert worker.prompt_lengths(clips, limit=0) == actual  # every bound is over 0: all measured
    assert worker.prompt_lengths(clips, limit=max(actual) * 10) == [None] * len(clips)
    # a limit between the shortest and the longest prompt: at least the longest clip (1.9 s) is measured
    mid = worker.prompt_lengths(clips, limit=sorted(actual)[2])
    assert mid[1] == actual[1] and all(m in (None, a) for m, a in zip(mid, actual))


def test_the_worker_holds_the_frontend_and_input_table_but_no_llm_layer(worker, model_dir):
    """What an embedding worker keeps in memory: the frontend and the LLM's input embedding table, no decoder layer
    and no output head (the engines' LLM folder is written by `rollout.engine_folder`, in a process of its own)."""
    full = load_audio_llm(model_dir)
    held = {n: p.numel() for n, p in worker.model.named_parameters()}
    frontend = sum(p.numel() for p in full.frontend.parameters())
    table = full.llm.get_input_embeddings().weight.numel()
    assert sum(held.values()) == frontend + table < sum(p.numel() for p in full.parameters())
    assert not any("layers" in n or "lm_head" in n for n in held)
