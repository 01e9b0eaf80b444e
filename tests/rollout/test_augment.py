"""policy.augment (data.augment): SNR, gain and speed measured on the output, seeding by (seed, step, clip), the
config's errors, and the embedding worker with augmentation on and off (tiny model, no Ray)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from funrl.config import load_config
from policy.augment import AugmentConfig, Augmenter, at_step, change_speed
from policy.config import ConfigError, ModelConfig
from policy.messages import Clip
from policy.models import get_adapter
from policy.models.audio import load_audio
from rollout.embedding import AudioEmbeddingWorker

SR = 16000
ONLY = {"noise_prob": 0.0, "speed_prob": 0.0, "gain_prob": 0.0}


def _snr_db(clean: np.ndarray, mixed: np.ndarray) -> float:
    clean = clean.astype(np.float64)
    return float(10 * np.log10(np.sum(clean**2) / np.sum((mixed.astype(np.float64) - clean) ** 2)))


def _tone(hz: float, seconds: float, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * hz * np.arange(int(SR * seconds)) / SR)).astype(np.float32)


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory):
    """Two noise files: white at 16 kHz, and a stereo one at 8 kHz in a sub-folder (read recursively, resampled)."""
    root = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(7)
    sf.write(root / "white.wav", (0.05 * rng.standard_normal(SR // 2)).astype(np.float32), SR)
    (root / "sub").mkdir()
    sf.write(root / "sub" / "hum.flac", (0.2 * rng.standard_normal((4000, 2))).astype(np.float32), 8000)
    (root / "notes.txt").write_text("not audio: ignored")
    return root


@pytest.fixture(scope="module")
def speech_clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech")
    wave = _tone(440, 1.2) + _tone(1300, 1.2, 0.1)
    sf.write(root / "a.wav", wave, SR)
    return Clip(str(root / "a.wav"), "a", "en", line=1, source=str(root / "m.jsonl")), wave


def cfg(**kw) -> AugmentConfig:
    return AugmentConfig(enabled=True, **{**ONLY, **kw})


@pytest.mark.parametrize("snr", [0.0, 7.5, 15.0])
def test_noise_is_mixed_at_the_requested_snr_within_0_1_db(noise_dir, speech_clip, snr):
    clip, wave = speech_clip
    aug = Augmenter(cfg(noise_dir=str(noise_dir), noise_prob=1.0, snr_db=(snr, snr)))
    for step in range(4):  # both files get drawn over these steps
        mixed = aug(wave, at_step([clip], step)[0])
        assert mixed.shape == wave.shape and mixed.dtype == np.float32
        assert abs(_snr_db(wave, mixed) - snr) < 0.1
    assert len(aug.files) == 2 and len(aug._noise) == 2


def test_gain_in_db_is_exact(speech_clip):
    clip, wave = speech_clip
    out = Augmenter(cfg(gain_prob=1.0, gain_db=(-6.0, -6.0)))(wave, at_step([clip], 1)[0])
    assert 20 * np.log10(
        np.sqrt(np.mean(out.astype(np.float64) ** 2) / np.mean(wave.astype(np.float64) ** 2))
    ) == pytest.approx(-6.0, abs=1e-5)
    np.testing.assert_allclose(out, wave * 10 ** (-6 / 20), rtol=1e-6, atol=0)


def test_speed_1_1_shortens_by_1_over_1_1_and_raises_the_pitch(speech_clip):
    clip, _ = speech_clip
    wave = _tone(1000, 2.0)
    out = Augmenter(cfg(speed_prob=1.0, speed=(1.1, 1.1)))(wave, at_step([clip], 1)[0])
    assert abs(out.size - wave.size / 1.1) <= 1
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    assert np.argmax(spectrum) * SR / out.size == pytest.approx(1100, abs=2)  # played faster: 1 kHz -> 1.1 kHz
    slower = change_speed(wave, 0.9)
    assert abs(slower.size - wave.size / 0.9) <= 1


def test_same_seed_step_and_clip_give_identical_samples_and_any_change_differs(noise_dir, speech_clip, tmp_path):
    clip, wave = speech_clip
    every = cfg(noise_dir=str(noise_dir), noise_prob=1.0, speed_prob=1.0, gain_prob=1.0)
    a = Augmenter(every)(wave, at_step([clip], 5)[0])
    b = Augmenter(every)(wave, at_step([clip], 5)[0])  # a fresh augmenter, as after a resume
    assert np.array_equal(a, b)
    assert a.shape != wave.shape or not np.array_equal(a, wave)
    changed = [
        Augmenter(every)(wave, at_step([clip], 6)[0]),
        Augmenter(replace(every, seed=1))(wave, at_step([clip], 5)[0]),
        Augmenter(every)(wave, at_step([Clip(clip.audio + "x", "a", source=clip.source)], 5)[0]),
    ]
    for other in changed:
        assert other.shape != a.shape or not np.array_equal(other, a)
    # the data set moved with its manifest: the same clip, the same audio
    moved = tmp_path / "moved"
    shutil.copytree(clip.audio.rsplit("/", 1)[0], moved)
    twin = Clip(str(moved / "a.wav"), "a", source=str(moved / "m.jsonl"), augment_step=5)
    assert np.array_equal(Augmenter(every)(wave, twin), a)


def test_off_by_default_and_without_a_step_the_audio_is_returned_bit_identical(noise_dir, speech_clip):
    clip, wave = speech_clip
    assert AugmentConfig().enabled is False
    assert Augmenter()(wave, at_step([clip], 3)[0]) is wave
    on = Augmenter(AugmentConfig(enabled=True, noise_dir=str(noise_dir)))
    assert on(wave, clip) is wave  # evaluation clips carry no step
    assert load_config(None, []).data.augment == AugmentConfig()


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.augment.snr_db=[20, 5]", "data.augment.snr_db"),
        ("data.augment.speed=[0.3, 1.1]", "data.augment.speed"),
        ("data.augment.gain_db=[3, -3]", "data.augment.gain_db"),
        ("data.augment.speed_prob=1.5", "data.augment.speed_prob"),
        ("data.augment.seed=-1", "data.augment.seed"),
        ("data.augment.enabled=true", "data.augment.noise_dir"),  # noise on (0.5) but no folder
    ],
)
def test_bad_augment_values_raise_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert err.value.key == key and key in str(err.value)
    if override.startswith(key):  # a value the override set: the message says where
        assert override in str(err.value)


def test_noise_dir_is_checked_at_config_time_naming_the_folder_or_file(tmp_path, noise_dir):
    def error(folder) -> ConfigError:
        with pytest.raises(ConfigError) as err:
            AugmentConfig(enabled=True, noise_dir=str(folder))
        assert err.value.key == "data.augment.noise_dir"
        return err.value

    assert "is not a folder" in str(error(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "holds no audio file" in str(error(tmp_path / "empty"))
    bad = tmp_path / "bad"
    shutil.copytree(noise_dir, bad)
    (bad / "broken.wav").write_bytes(b"RIFF\x00\x00 not a wav")
    assert "broken.wav" in str(error(bad)) and "cannot read audio" in str(error(bad))
    assert AugmentConfig(enabled=True, noise_dir=str(tmp_path / "missing"), noise_prob=0.0).noise_prob == 0.0
    assert AugmentConfig(noise_dir=str(tmp_path / "missing")).enabled is False  # off: not looked at
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(f"data:\n  augment:\n    enabled: true\n    noise_dir: {tmp_path / 'empty'}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:4"):
        load_config(str(yaml_file), [])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return get_adapter("encoder_adapter_llm").build_tiny(tmp_path_factory.mktemp("aug") / "tiny", llm="qwen2", seed=0)


def test_embedding_worker_with_augment_differs_from_off_and_repeats_for_the_same_step(
    model_dir, noise_dir, speech_clip
):
    clip, _ = speech_clip
    other = Clip(str(noise_dir / "white.wav"), "", source=str(noise_dir / "m.jsonl"))
    clips = [clip, other]
    off = AudioEmbeddingWorker(ModelConfig(path=str(model_dir)))
    on = AudioEmbeddingWorker(
        ModelConfig(path=str(model_dir)),
        augment=AugmentConfig(
            enabled=True, noise_dir=str(noise_dir), noise_prob=1.0, speed_prob=1.0, gain_prob=1.0, speed=(0.8, 0.9)
        ),
    )
    plain = off.embed(clips).prompt_embeds
    tagged_off = off.embed(at_step(clips, 3)).prompt_embeds  # off: the step changes nothing
    first, again = on.embed(at_step(clips, 3)).prompt_embeds, on.embed(at_step(clips, 3)).prompt_embeds
    step4 = on.embed(at_step(clips, 4)).prompt_embeds
    untagged = on.embed(clips).prompt_embeds  # evaluation: no step, no augmentation
    for i in range(2):
        assert torch.equal(tagged_off[i], plain[i]) and torch.equal(untagged[i], plain[i])
        assert torch.equal(first[i], again[i])
        assert first[i].shape[0] > plain[i].shape[0]  # slower: more audio frames
        assert first[i].shape != step4[i].shape or not torch.equal(first[i], step4[i])
    # the worker's audio is the augmenter's output on the loaded file
    direct = on.augment(load_audio(clip.audio), at_step([clip], 3)[0])
    model = on.model
    with torch.no_grad():
        want = model.build_prompt_embeds(model.embed_audio(model.audio_features([direct])), [None])[0]
    torch.testing.assert_close(first[0], want, atol=1e-5, rtol=1e-5)


def test_learner_recomputing_prompts_from_audio_hears_what_the_embedding_worker_heard(
    model_dir, noise_dir, speech_clip
):
    """model.train_encoder: the learner re-encodes the clips' audio (policy.learner_batch.load_waves with its
    Augmenter); the prompts it builds equal the sampler's, and would not without the augmentation."""
    from policy.config import LearnerConfig
    from policy.learner import Learner
    from policy.learner_batch import flatten_rollout, load_waves
    from policy.messages import RolloutBatch

    clip, _ = speech_clip
    aug = AugmentConfig(enabled=True, noise_dir=str(noise_dir), noise_prob=1.0, speed_prob=1.0, gain_prob=1.0)
    clips = at_step([clip, Clip(str(noise_dir / "white.wav"), "", source=str(noise_dir / "m.jsonl"))], 9)
    prompts = AudioEmbeddingWorker(ModelConfig(path=str(model_dir)), augment=aug).embed(clips)
    B, G, T = 2, 2, 3
    rows = flatten_rollout(
        RolloutBatch(
            prompts,
            torch.zeros(B, G, T, dtype=torch.long),
            torch.ones(B, G, T),
            torch.zeros(B, G, T),
            (("", ""), ("", "")),
        )
    )
    learner = Learner(
        str(model_dir), ModelConfig(path=str(model_dir), train_encoder=True), LearnerConfig(), augment=aug
    )
    assert learner.augment.cfg == aug
    model = AudioEmbeddingWorker(ModelConfig(path=str(model_dir))).model

    def rebuilt(waves):
        with torch.no_grad():
            return [
                model.build_prompt_embeds(model.embed_audio(model.audio_features([w])), [c.context])[0]
                for w, c in zip(waves, clips)
            ]

    for got, want in zip(rebuilt(load_waves(rows, 30.0, learner.augment)), prompts.prompt_embeds, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    plain = rebuilt(load_waves(rows, 30.0))
    assert all(p.shape != w.shape or not torch.allclose(p, w) for p, w in zip(plain, prompts.prompt_embeds))
