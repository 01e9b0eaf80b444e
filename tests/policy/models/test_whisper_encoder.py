"""encoder_adapter_llm with ``encoder.type: whisper``: unpadded Whisper log-mel, length rules, padding invariance,
equality with transformers' own WhisperEncoder forward on a full window, registry/config errors, save/export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers

from policy.models import load_audio_llm
from policy.models.base import get_adapter
from policy.models.whisper_encoder import WhisperAudioEncoder, WhisperEncoderConfig, whisper_features

# samples -> (mel frames = N // 160, encoder frames = ceil(T / 2), adapter frames = ceil(enc / 2)), by hand
LENGTHS = {
    400: (2, 1, 1),
    479: (2, 1, 1),
    480: (3, 2, 1),
    650: (4, 2, 1),
    3210: (20, 10, 5),
    7000: (43, 22, 11),
    16000: (100, 50, 25),
}


def _waves(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in sizes]


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return get_adapter("encoder_adapter_llm").build_tiny(tmp_path_factory.mktemp("w") / "m", encoder="whisper")


@pytest.fixture(scope="module")
def model(whisper_dir):
    return load_audio_llm(whisper_dir)


def test_output_lengths_follow_mel_hop_and_two_halvings(model):
    waves = _waves(list(LENGTHS))
    feats = model.audio_features(waves)
    assert feats.lengths.tolist() == [v[0] for v in LENGTHS.values()]
    assert feats.feats.shape == (len(waves), 100, 80)
    with torch.no_grad():
        enc, enc_len = model.frontend.encode(feats)
        out = model.embed_audio(feats)
    assert enc_len.tolist() == [v[1] for v in LENGTHS.values()] and enc.shape[1] == 50
    assert [o.shape for o in out] == [(v[2], 128) for v in LENGTHS.values()]
    with pytest.raises(ValueError, match="clip 0: .* at least 400 samples"):
        model.audio_features(_waves([399]))


def test_padded_batch_equals_each_clip_alone(model):
    waves = _waves([16000, 7000, 3210, 481])
    with torch.no_grad():
        batch = model.embed_audio(model.audio_features(waves))
        for w, b in zip(waves, batch):
            alone = model.embed_audio(model.audio_features([w]))[0]
            torch.testing.assert_close(b, alone, rtol=0, atol=1e-5)


def test_unpadded_features_equal_the_30s_padded_extractor_but_the_last_frame():
    wave = _waves([12345])[0]
    ours = whisper_features([wave], 80).feats[0]  # [T, 80]
    ref = transformers.WhisperFeatureExtractor(feature_size=80)(wave, sampling_rate=16000, return_tensors="np")
    ref = torch.from_numpy(ref.input_features[0].T)  # [3000, 80]
    assert ours.shape == (77, 80)
    torch.testing.assert_close(ours[:-1], ref[:76], rtol=0, atol=1e-5)


def test_full_window_forward_equals_transformers_whisper_encoder():
    torch.manual_seed(0)
    enc = WhisperAudioEncoder(
        WhisperEncoderConfig(d_model=64, n_heads=4, n_layers=2, ffn_dim=96, max_source_positions=40)
    ).eval()
    feats = torch.randn(2, 80, 80)
    with torch.no_grad():
        ours, lengths = enc(feats, torch.tensor([80, 80]))
        ref = enc.whisper(input_features=feats.transpose(1, 2)).last_hidden_state
    assert lengths.tolist() == [40, 40]
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="81 log-mel frames is longer than the Whisper encoder's 80"):
        enc(torch.zeros(1, 81, 80), torch.tensor([81]))


def test_whisper_folder_loads_through_the_registry_and_bad_configs_name_the_key(whisper_dir, tmp_path):
    config = json.loads((whisper_dir / "config.json").read_text())
    assert config["encoder"]["type"] == "whisper" and "features" not in config
    assert isinstance(load_audio_llm(whisper_dir).frontend.encoder, WhisperAudioEncoder)
    bad = tmp_path / "bad"
    for change, message in (
        ({"features": {"num_mel_bins": 80}}, "remove 'features'"),
        ({"cmvn": True}, "'cmvn': false"),
        ({"encoder": dict(config["encoder"], type="wav2vec")}, "encoder.type 'wav2vec'"),
        (
            {"encoder": dict(config["encoder"], n_heads=5)},
            "encoder: encoder.d_model 96 is not divisible by encoder.n_heads 5",
        ),
        ({"encoder": dict(config["encoder"], kernel=3)}, r"encoder: unknown keys \['kernel'\]"),
    ):
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(whisper_dir, bad)
        (bad / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=message) as err:
            load_audio_llm(bad)
        assert "bad/config.json" in str(err.value)


def test_saved_and_exported_whisper_model_reloads_with_the_same_outputs(whisper_dir, tmp_path):
    from policy.model_export import fill_model, gathered_model_state

    trained = load_audio_llm(whisper_dir)
    with torch.no_grad():  # stand-in for training: every frontend weight moves
        for p in trained.frontend.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    plain = fill_model(load_audio_llm(whisper_dir), gathered_model_state(trained))
    plain.save(tmp_path / "exported")
    back = load_audio_llm(tmp_path / "exported")
    waves = _waves([16000, 5000], seed=3)
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with torch.no_grad():
        want = trained.embed_audio(trained.audio_features(waves))
        got = back.embed_audio(back.audio_features(waves))
        lp_want = trained.sequence_logprobs(trained.build_prompt_embeds(want), ids)
        lp_got = back.sequence_logprobs(back.build_prompt_embeds(got), ids)
    for a, b in zip(want, got):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(lp_got, lp_want, rtol=0, atol=0)
    original = load_audio_llm(whisper_dir).embed_audio(trained.audio_features(waves))[0]
    assert (original - want[0]).abs().max() > 1e-3  # the round trip carried the moved weights
