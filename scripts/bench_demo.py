"""The built-in demo's result, per seed, beside a continued-SFT control that trains as long on the same clips.

    python scripts/bench_demo.py [--seeds 0 1 2] [--out runs/bench_demo] [key=value ...]

For each seed S: (1) `python -m funrl.train run.seed=S` (the default demo: eval before, GRPO, eval after);
(2) the control: `python -m funrl.sft` continuing the same starting model on the same RL clips
(`rl_train`, noise-only clips included with their empty reference: the same information GRPO's rewards
carry) for the wall time GRPO's steps took, then `python -m funrl.eval` on the same test split. Prints a
markdown table per seed and writes OUT/results.json. Extra key=value arguments go to the GRPO runs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from funrl.demo import start_model_dir  # noqa: E402
from funrl.demo.run import demo_data_dir  # noqa: E402
from funrl.eval import EvalReport, format_table  # noqa: E402
from funrl.metrics import read_metrics  # noqa: E402


def run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")


def grpo(seed: int, out: Path, extra: list[str]) -> tuple[EvalReport, EvalReport, float, float]:
    start = time.perf_counter()
    run([sys.executable, "-m", "funrl.train", f"run.seed={seed}", f"run.out_dir={out}", *extra], out.with_suffix(".log"))
    wall = time.perf_counter() - start
    train_s = sum(m.get("time.step", 0.0) for m in read_metrics(out / "metrics.jsonl"))
    load = lambda name: EvalReport(**json.loads((out / name).read_text()))  # noqa: E731
    return load("eval_before.json"), load("eval_after.json"), train_s, wall


def control(seed: int, out: Path, minutes: float) -> EvalReport:
    data = demo_data_dir("full")
    run([sys.executable, "-m", "funrl.sft", f"model.path={start_model_dir()}",
         f"data.train_manifest={data / 'rl_train.jsonl'}", "data.noise_clips=true", "data.curriculum_steps=0",
         f"optim.minutes={minutes:.3f}", "optim.steps=100000", "optim.lr=2e-4", "optim.warmup_steps=0",
         "optim.schedule=constant", "run.eval_every=0", f"run.seed={seed}", f"run.out_dir={out}"],
        out.with_suffix(".sft.log"))
    report = out / "eval_test.json"
    run([sys.executable, "-m", "funrl.eval", "--model", str(out / "model"), "--manifest",
         str(data / "test.jsonl"), "--out", str(report), "--no-progress"], out.with_suffix(".eval.log"))
    return EvalReport(**json.loads(report.read_text()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/bench_demo")
    p.add_argument("--no-control", action="store_true", help="GRPO runs only")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()
    out, results = Path(args.out), {}
    for seed in args.seeds:
        before, after, train_s, wall = grpo(seed, out / f"grpo-{seed}", args.overrides)
        columns = {"start (SFT)": before, "GRPO": after}
        if not args.no_control:
            columns["SFT control"] = control(seed, out / f"sft-{seed}", train_s / 60)
        results[seed] = {"train_s": train_s, "wall_s": wall, **{k: v.__dict__ for k, v in columns.items()}}
        print(f"\n### seed {seed}: GRPO {train_s / 60:.1f} min of steps, whole run {wall / 60:.1f} min\n")
        print(format_table(columns), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
