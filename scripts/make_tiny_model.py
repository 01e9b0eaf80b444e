"""Write a tiny random audio-LLM checkpoint (tests, demos) in seconds, without the hub.

    python scripts/make_tiny_model.py OUT_DIR --adapter encoder_adapter_llm --llm qwen2|qwen3|llama [--seed N]
        [--size tiny|demo] [--encoder conformer|whisper]

Any registered adapter works (``--llm``/``--size`` are passed only when given: adapters that build a fixed
architecture, e.g. transformers' audio-LLM classes, take no LLM family).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from policy.models import get_adapter, supported_model_types


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--adapter", default="encoder_adapter_llm", choices=supported_model_types())
    parser.add_argument("--llm", default=None, help="LLM family (encoder_adapter_llm: qwen2, qwen3, llama)")
    parser.add_argument("--size", default=None, help="size preset (encoder_adapter_llm: tiny, demo)")
    parser.add_argument("--encoder", default=None, help="audio encoder (encoder_adapter_llm: conformer, whisper)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    kwargs = {"seed": args.seed}
    if args.llm is not None:
        kwargs["llm"] = args.llm
    if args.size is not None:
        kwargs["size"] = args.size
    if args.encoder is not None:
        kwargs["encoder"] = args.encoder
    start = time.perf_counter()
    try:
        folder = get_adapter(args.adapter).build_tiny(args.out_dir, **kwargs)
    except (ValueError, TypeError) as err:
        print(f"make_tiny_model: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.adapter} checkpoint to {folder} in {time.perf_counter() - start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
