"""Benchmark the model layer on CPU (issue 4 item 8), tiny demo-size encoder_adapter_llm model.

    python scripts/bench_model.py [--size demo|tiny] [--llm qwen2|qwen3|llama] [--repeats 3]

1. audio -> prompt embeds for 16 clips x 5 s: fbank features, encoder + adapter, prompt splice; the padded
   batch vs a per-clip loop.
2. ``sequence_logprobs`` for 16 prompts x 8 hypotheses x 32 tokens (128 sequences): one padded batch vs a
   per-sequence loop (no grad), and the padded batch with backward.
Prints median milliseconds over ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from policy.models import get_adapter, load_audio_llm

CLIPS, SECONDS, HYPS, TOKENS = 16, 5.0, 8, 32


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1000)
    return statistics.median(runs)


def bench(size: str, llm: str, repeats: int) -> list[tuple[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        model = load_audio_llm(get_adapter("encoder_adapter_llm").build_tiny(Path(tmp) / "m", llm=llm, size=size))
    model.eval()
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(16000 * SECONDS))).astype(np.float32) for _ in range(CLIPS)]
    contexts = [None if i % 2 else "hotword 北京" for i in range(CLIPS)]
    rows: list[tuple[str, float]] = []
    with torch.no_grad():
        feats = model.audio_features(waves)
        rows.append(("fbank features, 16 x 5 s", timed(lambda: model.audio_features(waves), repeats)))
        rows.append(("encoder+adapter, padded batch", timed(lambda: model.embed_audio(feats), repeats)))
        one = [model.audio_features([w]) for w in waves]
        rows.append(("encoder+adapter, per-clip loop", timed(lambda: [model.embed_audio(f) for f in one], repeats)))
        audio = model.embed_audio(feats)
        rows.append(("prompt splice (16 clips)", timed(lambda: model.build_prompt_embeds(audio, contexts), repeats)))
        rows.append(
            (
                "audio -> prompt embeds total",
                timed(
                    lambda: model.build_prompt_embeds(model.embed_audio(model.audio_features(waves)), contexts), repeats
                ),
            )
        )
        prompts = model.build_prompt_embeds(audio, contexts)
        rows_p = [p for p in prompts for _ in range(HYPS)]
        ids = torch.randint(0, len(model.tokenizer), (CLIPS * HYPS, TOKENS), generator=torch.Generator().manual_seed(0))
        rows.append(
            ("sequence_logprobs 128 x 32, padded batch", timed(lambda: model.sequence_logprobs(rows_p, ids), repeats))
        )
        rows.append(
            (
                "sequence_logprobs 128 x 32, per-sequence loop",
                timed(lambda: [model.sequence_logprobs([p], ids[i : i + 1]) for i, p in enumerate(rows_p)], repeats),
            )
        )

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=True)
        model.sequence_logprobs(rows_p, ids).sum().backward()

    rows.append(("sequence_logprobs 128 x 32, batch fwd+bwd", timed(fwd_bwd, repeats)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="demo", choices=("tiny", "demo"))
    parser.add_argument("--llm", default="qwen2", choices=("qwen2", "qwen3", "llama"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = bench(args.size, args.llm, args.repeats)
    print(f"# model layer, {args.size} {args.llm}, CPU, {torch.get_num_threads()} threads, median of {args.repeats}")
    for name, ms in rows:
        print(f"{name:48s} {ms:10.1f} ms")
    by = dict(rows)
    enc_ratio = by["encoder+adapter, per-clip loop"] / by["encoder+adapter, padded batch"]
    print(f"{'encoder+adapter: loop / batch':48s} {enc_ratio:10.2f} x")
    loop, batch = by["sequence_logprobs 128 x 32, per-sequence loop"], by["sequence_logprobs 128 x 32, padded batch"]
    print(f"{'sequence_logprobs: loop / batch':48s} {loop / batch:10.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
