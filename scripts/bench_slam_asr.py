"""The SLAM-ASR model (docs/slam_asr.md) end to end, measured: build, SFT, GRPO, beside a same-time SFT control.

    python scripts/bench_slam_asr.py [--out runs/bench_slam_asr] [--sft-minutes 120] [--grpo-steps 300]
                                     [--real-speech MANIFEST] [--data data/demo-keyword_rich] [--seed 0]
                                     [--sft-from funrl/recipes/assets/slam_asr_sft] [key=value ...]

Steps (each skipped when its output is already there; a stage stopped midway resumes from its newest checkpoint
with ``--resume``, so a killed bench goes on where it was; a finished bench run again with a larger
``--grpo-steps`` resumes GRPO to that step and then the control to GRPO's new minutes, and evaluates both anew):
(1) `scripts/build_slam_asr.py OUT/model`; (2) `python -m funrl.sft --config funrl/recipes/slam_asr_sft.yaml`
for ``--sft-minutes`` (with ``--sft-from ASSET``: the shipped SFT model rebuilt on OUT/model by
`scripts/ship_slam_sft.py unpack` instead); (3) `python -m funrl.train --config funrl/recipes/slam_asr_grpo.yaml` for
``--grpo-steps`` (extra key=value arguments go to it), which evaluates the SFT model and its own result on
the test split; (4) the control: `python -m funrl.sft` continuing the SFT model with ``model.train=adapter_lora``
on the same RL clips (noise-only clips with their empty reference; cross-entropy only) for the wall time GRPO's
steps took, then
`python -m funrl.eval` on the test split; (5) with ``--real-speech``, `python -m funrl.eval` of the SFT, GRPO
and control models on that manifest. Prints one markdown table (test WER, keyword recall, hallucination on
noise, language mismatch, real-speech WER and hallucination) and the GRPO step's medians by stage, peak memory
of all processes and the LoRA sync time; writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from funrl.checkpoint import CheckpointManager
from funrl.metrics import read_metrics
from funrl.timing import TreeMemory

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "funrl" / "recipes"
COLUMNS = (
    ("test WER", "test", "wer"),
    ("keyword recall", "test", "keyword_recall"),
    ("hallucination on noise", "test", "hallucination_rate"),
    ("language mismatch", "test", "lang_mismatch_rate"),
    ("real-speech WER", "real", "wer"),
    ("real-speech hallucination", "real", "hallucination_rate"),
)


def run(args: list[str], log: Path) -> float:
    """``python ARGS`` from the repository root, output to ``log``; returns its wall time in seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"python {' '.join(args)} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - start


def _checkpointed(folder: Path) -> bool:
    return CheckpointManager(folder).latest() is not None


def _unfinished(sft: Path) -> bool:
    """An SFT run stopped before its end: its newest intact checkpoint is not the final one."""
    last = CheckpointManager(sft).latest()
    return last is not None and not last.trainer_state().get("finished", False)


def grpo_steps_done(grpo: Path) -> int:
    """The last step a GRPO stage logged (0 before its first)."""
    path = grpo / "metrics.jsonl"
    return max((int(m["step"]) for m in read_metrics(path)), default=0) if path.is_file() else 0


def sft_minutes_done(sft: Path) -> float:
    """Minutes an SFT stage has trained, by its newest checkpoint (0 without one)."""
    last = CheckpointManager(sft).latest()
    return float(last.trainer_state()["elapsed_s"]) / 60 if last is not None else 0.0


def drop_reports(reports: list[Path]) -> None:
    """A finished stage asked to go further (more GRPO steps, the control's minutes to match) resumes; the
    reports of the model it had are removed so that they are made again."""
    for report in reports:
        report.unlink(missing_ok=True)


def resumed(args: list[str], folder: Path) -> list[str]:
    """``args`` as a fresh run, or ``--resume folder`` (with the same overrides) when a stopped run left a
    checkpoint there: a killed bench goes on inside the stage it was in."""
    if not _checkpointed(folder):
        return args
    overrides = [x for x in args[4:] if not x.startswith("run.out_dir=")]  # past -m MODULE --config RECIPE
    return [*args[:2], "--resume", str(folder), *overrides]


def evaluate(model: Path, manifest: Path, report: Path) -> dict:
    if not report.is_file():
        args = ["-m", "funrl.eval", "--model", str(model), "--manifest", str(manifest), "--out", str(report)]
        run([*args, "--no-progress"], report.with_suffix(".log"))
    return json.loads(report.read_text())


def stage_medians(metrics: Path) -> dict[str, float]:
    recs = read_metrics(metrics)[10:] or read_metrics(metrics)  # past the first steps' warm-up
    keys = ("time.embed", "time.generate", "time.score", "time.learn", "time.sync", "time.step")
    return {k: statistics.median(r[k] for r in recs if k in r) for k in keys}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_slam_asr")
    p.add_argument("--sft-minutes", type=float, default=120.0)
    p.add_argument("--grpo-steps", type=int, default=300)
    p.add_argument("--real-speech", type=Path, help="a manifest of real recorded speech (never trained on)")
    p.add_argument(
        "--data", type=Path, default=ROOT / "data" / "demo-keyword_rich", help="the demo data (sft_train, dev, ...)"
    )
    p.add_argument("--size", choices=("full", "tiny"), default="full", help="tiny: the builder's CI size (smoke test)")
    p.add_argument("--sft-steps", type=int, default=3000, help="SFT step cap (optim.steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sft-from", type=Path, help="start from a shipped SFT model (scripts/ship_slam_sft.py pack) instead of SFT"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra GRPO config overrides")
    a = p.parse_args()
    out, data, seconds = a.out.resolve(), a.data.resolve(), {}
    built, sft, grpo, control = out / "model", out / "sft", out / "grpo", out / "control"
    with TreeMemory() as mem:
        if not (built / "config.json").is_file():
            args = ["scripts/build_slam_asr.py", str(built), "--seed", str(a.seed), "--size", a.size]
            seconds["build"] = run(args, out / "build.log")
        if a.sft_from and not (sft / "model" / "config.json").is_file():
            args = ["scripts/ship_slam_sft.py", "unpack", str(built), str(sft / "model"), "--from", str(a.sft_from)]
            seconds["sft"] = run(args, out / "sft.log")
        if not (sft / "model" / "config.json").is_file() or _unfinished(sft):
            args = ["-m", "funrl.sft", "--config", str(RECIPES / "slam_asr_sft.yaml"), f"model.path={built}"]
            args += [f"data.train_manifest={data / 'sft_train.jsonl'}", f"data.dev_manifest={data / 'dev.jsonl'}"]
            args += [f"run.out_dir={sft}", f"optim.minutes={a.sft_minutes}", f"optim.steps={a.sft_steps}"]
            args += [f"run.seed={a.seed}"]
            seconds["sft"] = run(resumed(args, sft), out / "sft.log")
        grpo_more = (grpo / "eval_after.json").is_file() and grpo_steps_done(grpo) < a.grpo_steps
        if grpo_more:  # a finished run trained further: `--resume` with the larger run.steps
            drop_reports([out / "real_GRPO.json"])
        if not (grpo / "eval_after.json").is_file() or grpo_more:
            args = ["-m", "funrl.train", "--config", str(RECIPES / "slam_asr_grpo.yaml"), f"model.path={sft / 'model'}"]
            args += [f"data.train_manifest={data / 'rl_train.jsonl'}", f"data.test_manifest={data / 'test.jsonl'}"]
            args += ["data.demo_dir="]  # the bench's own data folder, not the recipe's
            args += [f"run.out_dir={grpo}", f"run.steps={a.grpo_steps}", f"run.seed={a.seed}", *a.overrides]
            seconds["grpo"] = run(resumed(args, grpo), out / "grpo.log")
    grpo_s = sum(m.get("time.step", 0.0) for m in read_metrics(grpo / "metrics.jsonl"))
    control_more = (control / "model" / "config.json").is_file() and sft_minutes_done(control) < grpo_s / 60
    if control_more:  # GRPO went further: the control resumes to its new minutes
        drop_reports([control / "eval_test.json", out / "real_SFT_control.json"])
    if not (control / "model" / "config.json").is_file() or _unfinished(control) or control_more:
        args = ["-m", "funrl.sft", "--config", str(RECIPES / "slam_asr_sft.yaml"), f"model.path={sft / 'model'}"]
        args += ["model.train=adapter_lora", f"data.train_manifest={data / 'rl_train.jsonl'}", "data.noise_clips=true"]
        args += [f"optim.minutes={grpo_s / 60:.3f}", "optim.steps=100000", "optim.lr=2e-4", "optim.warmup_steps=0"]
        args += ["optim.schedule=constant", "run.eval_every=0", f"run.out_dir={control}", f"run.seed={a.seed}"]
        args += ["optim.embed_ctc_weight=0"]  # cross-entropy alone: the answer GRPO's rewards carry, no more
        args += ["data.broad_clips=0"]  # the RL clips alone, as GRPO has
        seconds["control"] = run(resumed(args, control), out / "control.log")
    models = {"SFT": sft / "model", "GRPO": grpo / "model", "SFT control": control / "model"}
    reports = {
        "SFT": {"test": json.loads((grpo / "eval_before.json").read_text())},
        "GRPO": {"test": json.loads((grpo / "eval_after.json").read_text())},
        "SFT control": {"test": evaluate(control / "model", data / "test.jsonl", control / "eval_test.json")},
    }
    if a.real_speech:
        for name, model in models.items():
            reports[name]["real"] = evaluate(model, a.real_speech, out / f"real_{name.replace(' ', '_')}.json")
    stages = stage_medians(grpo / "metrics.jsonl")
    result = {"seconds": seconds, "grpo_steps_s": grpo_s, "stages": stages, "reports": reports}
    measured = bool(seconds.keys() & {"build", "sft", "grpo"})  # else no stage ran under `mem` this time
    result |= {"peak_rss": mem.peak_rss if measured else None, "peak_pss": mem.peak_pss if measured else None}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(table(reports))
    print_stages(stages, grpo_s, result["peak_rss"], result["peak_pss"])


def print_stages(stages: dict[str, float], grpo_s: float, peak_rss: int | None, peak_pss: int | None) -> None:
    by_stage = ", ".join(f"{k[5:]} {v:.2f} s" for k, v in stages.items())
    print(f"\nGRPO step (median of steps 11 on; of all when fewer): {by_stage}")
    print(f"LoRA sync {stages['time.sync'] * 1000:.0f} ms; GRPO steps {grpo_s / 60:.1f} min")
    if peak_rss is None or peak_pss is None:
        print("peak memory: not measured (build, SFT and GRPO were all done before this run)")
    else:
        gib = f"RSS {peak_rss / 2**30:.2f} GiB, PSS {peak_pss / 2**30:.2f} GiB"
        print(f"peak memory of all processes (build, SFT, GRPO): {gib}")


def table(reports: dict[str, dict[str, dict]]) -> str:
    head = ["model", *[c for c, _, _ in COLUMNS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, by_split in reports.items():
        cells = []
        for _, split, key in COLUMNS:
            value = by_split.get(split, {}).get(key)
            cells.append("—" if value is None else f"{100 * value:.2f} %")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
