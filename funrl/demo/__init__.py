"""The built-in demo speech task: locally synthesised speech (espeak-ng, piper), noise, and
ordinary manifests. Build it with `python -m funrl.demo.build OUT_DIR` or
`funrl.demo.build.build_demo_data(out_dir)`.

The shipped starting model (an ``encoder_adapter_llm`` on Whisper tiny.en's encoder, trained by ``python -m
funrl.sft --config funrl/demo/sft_whisper.yaml``; see ``assets/README.md``) lives in `START_MODEL`;
`start_model_dir()` checks it.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
START_MODEL = ASSETS / "start_model"  # model folder: config.json, frontend.safetensors, llm/
SFT_CONFIG = Path(__file__).resolve().parent / "sft_whisper.yaml"  # the recipe that trained it


def start_model_dir() -> Path:
    """The shipped starting model folder (``policy.models.load_audio_llm`` loads it); raises when missing."""
    if not (START_MODEL / "config.json").is_file():
        raise FileNotFoundError(
            f"the shipped demo starting model is missing from {START_MODEL}; rebuild it with "
            f"`python -m funrl.sft --config {SFT_CONFIG}` and `python scripts/ship_demo_model.py OUT`"
        )
    return START_MODEL
