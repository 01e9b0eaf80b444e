"""The built-in demo's result, per seed, beside a continued-SFT control that trains as long on the same clips.

    python scripts/bench_demo.py [--seeds 0 1 2] [--out runs/bench_demo] [key=value ...]
    python scripts/bench_demo.py --recipes grpo dr_grpo dapo gspo rloo grpo_mb2 [--seeds 0 1 2] [--no-control]

For each seed S: (1) `python -m funrl.train run.seed=S` (the default demo: eval before, GRPO, eval after);
(2) the control: `python -m funrl.sft` continuing the same starting model on the same RL clips
(`rl_train`, noise-only clips included with their empty reference: the same information GRPO's rewards
carry) for the wall time GRPO's steps took, then `python -m funrl.eval` on the same test split. Prints a
markdown table per seed and writes OUT/results.json. Extra key=value arguments go to the GRPO runs.

``--recipes``: the algorithm variants of RECIPES side by side instead (each on every seed; the control once per
seed), then one summary table: test WER, hallucination, keyword recall, Mandarin CER, mean KL, wall time and
the largest vLLM/learner log-prob gap of the run, means over the seeds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from funrl.config import load_config
from funrl.demo import start_model_dir
from funrl.demo.run import DEFAULT_DEMO_SIZE, DEMO_SIZES, demo_data_dir
from funrl.eval import EvalReport, format_table
from funrl.metrics import read_metrics


def run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")


def grpo(seed: int, out: Path, extra: list[str], size: str) -> tuple[EvalReport, EvalReport, float, float]:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "funrl.train", "--demo-size", size, f"run.seed={seed}", f"run.out_dir={out}"]
    run([*cmd, *extra], out.with_suffix(".log"))
    wall = time.perf_counter() - start
    train_s = sum(m.get("time.step", 0.0) for m in read_metrics(out / "metrics.jsonl"))
    load = lambda name: EvalReport(**json.loads((out / name).read_text()))  # noqa: E731
    return load("eval_before.json"), load("eval_after.json"), train_s, wall


def control(seed: int, out: Path, minutes: float, size: str, grpo_out: Path) -> EvalReport:
    data = demo_data_dir(size)
    # what GRPO trained, the control trains: with model.train_encoder off, the encoder stays frozen (its states
    # cached once, as in the starting model's SFT)
    frozen = not load_config(str(grpo_out / "config.yaml"), []).model.train_encoder
    run(
        [
            sys.executable,
            "-m",
            "funrl.sft",
            f"model.path={start_model_dir()}",
            f"data.train_manifest={data / 'rl_train.jsonl'}",
            "data.noise_clips=true",
            "data.curriculum_steps=0",
            f"optim.minutes={minutes:.3f}",
            "optim.steps=100000",
            "optim.lr=2e-4",
            "optim.warmup_steps=0",
            "optim.schedule=constant",
            "run.eval_every=0",
            f"run.seed={seed}",
            f"run.out_dir={out}",
            *(["optim.freeze_encoder=true", "optim.cache_encoder=true"] if frozen else []),
        ],
        out.with_suffix(".sft.log"),
    )
    report = out / "eval_test.json"
    run(
        [
            sys.executable,
            "-m",
            "funrl.eval",
            "--model",
            str(out / "model"),
            "--manifest",
            str(data / "test.jsonl"),
            "--out",
            str(report),
            "--no-progress",
        ],
        out.with_suffix(".eval.log"),
    )
    return EvalReport(**json.loads(report.read_text()))


# recipe -> overrides of the demo's grpo.yaml (README "Algorithm options")
RECIPES = {
    "grpo": [],
    "dr_grpo": ["learner.advantage=dr_grpo", "learner.agg=seq-mean-token-sum-norm"],
    "dapo": [
        "learner.clip_eps_high=0.28",
        "learner.agg=token-mean",
        "learner.beta=0",
        "run.dynamic_sampling=true",
        "run.max_refill_rounds=2",
        "rollout.truncated=mask",
    ],
    "gspo": ["learner.loss=gspo", "learner.clip_eps_low=3e-4", "learner.clip_eps_high=4e-4"],
    "rloo": ["learner.advantage=rloo"],
    "grpo_mb2": ["learner.mini_batches=2"],
    # one step off (run.async_steps=1): the next step samples while the learner updates, TIS-corrected
    "grpo_async": ["run.async_steps=1", "learner.tis_cap=2"],
}


def run_stats(out: Path) -> dict[str, float]:
    """Mean KL and the largest sampler/learner log-prob gap over a run's steps (metrics.jsonl)."""
    recs = read_metrics(out / "metrics.jsonl")
    kls = [r["kl"] for r in recs if r.get("kl") is not None]
    gaps = [r["rollout.logprob_diff.max"] for r in recs if r.get("rollout.logprob_diff.max") is not None]
    return {"kl_mean": sum(kls) / len(kls) if kls else float("nan"), "gap_max": max(gaps, default=float("nan"))}


def recipes(args: argparse.Namespace) -> None:
    out, results = Path(args.out), {}
    for seed in args.seeds:
        for name in args.recipes:
            folder = out / f"{name}-{seed}"
            before, after, train_s, wall = grpo(seed, folder, [*RECIPES[name], *args.overrides], args.demo_size)
            results[f"{name}/{seed}"] = {
                "recipe": name,
                "seed": seed,
                "train_s": train_s,
                "wall_s": wall,
                "before": before.__dict__,
                "after": after.__dict__,
                **run_stats(folder),
            }
            if not args.no_control and name == args.recipes[0]:
                sft = control(seed, out / f"sft-{seed}", train_s / 60, args.demo_size, folder)
                results[f"sft_control/{seed}"] = {
                    "recipe": "sft_control",
                    "seed": seed,
                    "train_s": train_s,
                    "wall_s": float("nan"),
                    "before": before.__dict__,
                    "after": sft.__dict__,
                    "kl_mean": float("nan"),
                    "gap_max": float("nan"),
                }
            (out / "results.json").write_text(json.dumps(results, indent=1))
    print(summary(results))


def summary(results: dict) -> str:
    """Markdown: one row per recipe, means over its seeds."""
    cols = [
        ("test WER", "wer"),
        ("hallucination", "hallucination_rate"),
        ("keyword recall", "keyword_recall"),
        ("keyword recall (context)", "keyword_recall_context"),
        ("Mandarin CER", "cer"),
    ]
    head = ["recipe", "seeds", *[c for c, _ in cols], "mean KL", "GRPO min", "max log-prob gap"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {}
    for r in results.values():
        by.setdefault(r["recipe"], []).append(r)

    def mean(vals):
        vals = [v for v in vals if v is not None and v == v]
        return sum(vals) / len(vals) if vals else float("nan")

    for name, rs in by.items():
        start = rs[0]["before"]
        cells = [
            f"{mean([r['after'][k] for r in rs]):.4f} ({start[k]:.4f})" if start.get(k) is not None else "-"
            for _, k in cols
        ]
        lines.append(
            f"| {name} | {len(rs)} | " + " | ".join(cells) + f" | {mean([r['kl_mean'] for r in rs]):.3f} | "
            f"{mean([r['train_s'] for r in rs]) / 60:.1f} | {max(r['gap_max'] for r in rs):.2g} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/bench_demo")
    p.add_argument("--no-control", action="store_true", help="GRPO runs only")
    p.add_argument("--demo-size", choices=DEMO_SIZES, default=DEFAULT_DEMO_SIZE, help="the demo data preset")
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), help="compare these algorithm variants")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()
    if args.recipes:
        return recipes(args)
    out, results = Path(args.out), {}
    for seed in args.seeds:
        before, after, train_s, wall = grpo(seed, out / f"grpo-{seed}", args.overrides, args.demo_size)
        columns = {"start (SFT)": before, "GRPO": after}
        if not args.no_control:
            columns["SFT control"] = control(
                seed, out / f"sft-{seed}", train_s / 60, args.demo_size, out / f"grpo-{seed}"
            )
        results[seed] = {"train_s": train_s, "wall_s": wall, **{k: v.__dict__ for k, v in columns.items()}}
        print(f"\n### seed {seed}: GRPO {train_s / 60:.1f} min of steps, whole run {wall / 60:.1f} min\n")
        print(format_table(columns), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
