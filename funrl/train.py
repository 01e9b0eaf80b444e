"""``python -m funrl.train``: GRPO fine-tuning of an audio-LLM for speech recognition.

The loop (docs/design.md#the-training-loop): embed -> generate -> score -> advantage -> update -> sync.
With no arguments it runs the built-in demo (funrl/demo): builds the speech data
and the starting model if needed, evaluates, trains, evaluates again and prints a
before/after table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import rewards
from funrl.audio_check import check_prompt_lengths
from funrl.checkpoint import CheckpointManager, CheckpointWriteError, RunLock, RunLockedError
from funrl.cluster import Cluster, WorkerError
from funrl.config import ConfigError, TrainConfig, dump_config, load_config, save_config, to_dict
from funrl.config_loader import resumed_config
from funrl.data import ManifestError
from funrl.demo.plan import DEFAULT_DEMO_SIZE, PRESETS
from funrl.eval import EvalReport, evaluate, format_table, write_report
from funrl.inputs import Inputs, load_inputs, with_local_model
from funrl.metrics import JsonlLog, MetricsLogger, should_log
from funrl.preemption import GracefulStop, Preempted
from funrl.records import rollout_record, step_record
from funrl.step_rollouts import StepRollouts
from funrl.timing import StageTimer
from policy.messages import ScoredRollout

EPILOG = """\
examples:
  python -m funrl.train                                   # the built-in demo, end to end
  python -m funrl.train --config my.yaml rollout.n=8 learner.lr=5e-6
  python -m funrl.train --config my.yaml learner.finetune=lora learner.lora.r=16
  python -m funrl.train --resume runs/my-run              # continue a killed run
  python -m funrl.train --config my.yaml ray.address=auto learner.num_ranks=8 learner.gpus_per_rank=1
Overrides are dotted keys of the config (see the dump printed at start, or OUT/config.yaml).
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m funrl.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--config", help="YAML config file (any subset of the keys; the rest keep defaults)")
    p.add_argument("--resume", metavar="OUT", help="resume the run in folder OUT from its last checkpoint")
    p.add_argument(
        "--no-demo",
        action="store_true",
        help="never fall back to the built-in demo (fail if data.train_manifest is unset)",
    )
    p.add_argument(
        "--demo-size",
        choices=tuple(PRESETS),
        default=DEFAULT_DEMO_SIZE,
        help="built-in demo only: which data preset (funrl/demo/plan.py); 'small' is the reduced data and run CI "
        "uses (about a minute)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. rollout.n=8")
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """--resume OUT: OUT/config.yaml, trained in OUT; --config or a data.train_manifest override: that; else the
    demo."""
    if args.resume:
        return resumed_config(args.resume, args.overrides, TrainConfig)
    if args.config or args.no_demo or any(o.startswith("data.train_manifest=") for o in args.overrides):
        cfg = load_config(args.config, args.overrides)
        if cfg.data.demo_dir:
            from funrl.demo.run import with_demo_data

            cfg = with_demo_data(cfg)
        if not cfg.data.train_manifest:
            raise ConfigError(
                "data.train_manifest is not set: give a manifest (data.train_manifest=PATH), the built-in demo "
                "data (data.demo_dir=DIR), or run without --config/--no-demo for the built-in demo"
            )
        if not cfg.model.path and not args.config:
            raise ConfigError(
                "model.path is not set: data.train_manifest given on the command line without --config trains from "
                "the defaults, not the built-in demo. For the demo's recipe and starting model on these clips add "
                "--config funrl/demo/grpo.yaml model.path=funrl/demo/assets/start_model (and data.test_manifest=PATH "
                "for the before/after table); else give model.path=DIR",
                key="model.path",
            )
        return cfg
    from funrl.demo.run import demo_config

    return demo_config(args.overrides, size=args.demo_size)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


RUN_FILES = (
    "metrics.jsonl",
    "rollouts.jsonl",
    "eval_before.json",
    "eval_after.json",
    "wandb_run.json",
    "mlflow_run.json",
)


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Run GRPO for ``cfg.run.steps`` steps; returns the run folder.

    With ``data.test_manifest`` set, the policy is evaluated (greedy) on it before and after training and
    a before/after table is printed (OUT/eval_before.json, OUT/eval_after.json).
    """
    cfg = with_local_model(cfg)  # a Hub id -> its folder in the local HF cache
    data = load_inputs(cfg)  # everything checked before any file or actor
    with RunLock(cfg.run.out_dir):  # one process per run folder
        return _train(cfg, resume, data)


def _train(cfg: TrainConfig, resume: bool, data: Inputs) -> Path:
    out = Path(cfg.run.out_dir)
    ckpts = CheckpointManager(out, keep_last=cfg.run.keep_last)
    last = ckpts.latest() if resume else None
    if not resume and ckpts.latest() is not None:
        raise ConfigError(
            f"run.out_dir {out} already holds a run with checkpoints: continue it with "
            f"--resume {out}, or choose another run.out_dir"
        )
    leftovers = [n for n in RUN_FILES if (out / n).exists()] if not resume else []
    if leftovers:  # a fresh run would reuse eval_before.json and drop the old metrics without a word
        raise ConfigError(
            f"run.out_dir {out} holds files of an earlier run ({', '.join(leftovers)}) but no "
            f"checkpoint: continue it from step 1 with --resume {out}, delete them, or choose "
            "another run.out_dir"
        )
    sampler, test_clips, eval_clips = data.sampler, data.test_clips, data.eval_clips
    start = last.step + 1 if last else 1
    out.mkdir(parents=True, exist_ok=True)
    if last:  # checked against the checkpoint before config.yaml (with the --resume overrides) is written
        try:
            sampler.load_state_dict(last.trainer_state()["data"])
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"--resume {out}: this config does not match the checkpoint {last.path} ({exc}); "
                f"{out / 'config.yaml'} is unchanged"
            ) from None
    save_config(cfg, out / "config.yaml")
    seed_everything(cfg.run.seed + start)
    # log lines of steps after start - 1 (left by a run killed before its next checkpoint) are dropped
    metrics = MetricsLogger(out, resume_step=start - 1, loggers=cfg.run.loggers, project=cfg.run.project)
    metrics.log_config(to_dict(cfg))
    samples = JsonlLog(out / "rollouts.jsonl", resume_step=start - 1)

    # prompt lengths need the model's frontend: the embedding worker measures them before the engines and the
    # learner start
    def check_prompts(cluster: Cluster) -> None:
        check_prompt_lengths(
            data.all_clips(),
            cluster.prompt_lengths,
            cfg.rollout.max_model_len,
            cfg.rollout.max_new_tokens,
        )

    with Cluster(cfg, after_embedder=check_prompts) as cluster:
        if last:
            cluster.load_checkpoint(last.path / "learner")
            cluster.sync()
            print(f"[funrl] resumed from {last.path} at step {start}", file=sys.stderr)
        if test_clips and not (out / "eval_before.json").exists():
            run_eval(cluster, test_clips, out / "eval_before.json")
        with GracefulStop() as stop:
            run_steps(cfg, cluster, sampler, start, RunLogs(metrics, samples, ckpts), eval_clips, stop)
        if cfg.run.save_model:
            cluster.learner.save_model(str(out / "model"))
        if test_clips:
            after = run_eval(cluster, test_clips, out / "eval_after.json")
            before = EvalReport(**json.loads((out / "eval_before.json").read_text()))
            print(format_table({"before": before, "after": after}))
            metrics.log_table("eval", [{"split": "before", **asdict(before)}, {"split": "after", **asdict(after)}])
    metrics.close()
    samples.close()
    return out


@dataclass(frozen=True)
class RunLogs:
    """Where a run's steps go: metrics (metrics.jsonl + TensorBoard), rollouts.jsonl, checkpoints."""

    metrics: MetricsLogger
    samples: JsonlLog
    ckpts: CheckpointManager


def run_steps(
    cfg: TrainConfig, cluster: Cluster, sampler, start: int, logs: RunLogs, eval_clips, stop: GracefulStop
) -> None:
    """Steps ``start``..``run.steps``, each logged and checkpointed every ``run.save_every``; on a stop signal,
    after the step in progress: a checkpoint, then `Preempted`."""
    out = Path(cfg.run.out_dir)
    progress = _progress(range(start, cfg.run.steps + 1), cfg.run.steps, start - 1)
    rollouts = StepRollouts(cfg, cluster, sampler)
    try:
        for step in progress:
            before, finished = rollouts.position(step), cluster.updates_finished
            try:
                record, scored = train_step(cfg, cluster, rollouts, step)
            except WorkerError:  # an engine past its restarts, a learner rank: keep what the learner holds
                if cluster.updates_started == finished:  # failed before the update: step - 1's weights
                    _checkpoint_after_failure(cfg, cluster, logs, step, step - 1, before, start)
                elif cluster.updates_finished > finished:  # failed in the sync: step's (no metrics line)
                    _checkpoint_after_failure(cfg, cluster, logs, step, step, rollouts.position(step + 1), start)
                raise
            if should_log(cfg.run.log_rollouts, step):
                logs.samples.write(step, rollout_record(scored))
            if cfg.run.eval_every and eval_clips and step % cfg.run.eval_every == 0:
                dev = run_eval(cluster, eval_clips, out / "eval" / f"step_{step:06d}.json", progress=False)
                record |= {f"eval.{k}": v for k, v in asdict(dev).items() if isinstance(v, float)}
            logs.metrics.log(step, record)
            progress.set_postfix(
                reward=f"{record['reward.total.mean']:.3f}",
                wer=f"{1.0 - record.get('reward.wer.mean', float('nan')):.3f}",
                kl=f"{record.get('kl', float('nan')):.3f}",
                s_step=f"{record['time.step']:.1f}",
            )
            if step % cfg.run.save_every == 0 or step == cfg.run.steps or stop.requested:
                logs.ckpts.save(step, {"data": rollouts.position(step + 1)}, cluster.save_checkpoint)
            if stop.requested and step < cfg.run.steps:
                progress.close()
                raise Preempted(
                    f"stopped after step {step} of {cfg.run.steps} (checkpoint written); continue with:\n"
                    f"  python -m funrl.train --resume {out}",
                    stop.exit_code,
                )
    finally:
        rollouts.close()


def _checkpoint_after_failure(
    cfg: TrainConfig, cluster: Cluster, logs: RunLogs, step: int, done: int, data: dict, start: int
) -> None:
    """Step ``step`` failed with the learner consistent at step ``done``: a checkpoint of it with the data
    position ``data``, unless step ``done`` has one (the last periodic one, or the one resumed from)."""
    if done < start or (done < step and done % cfg.run.save_every == 0):
        return
    try:
        logs.ckpts.save(done, {"data": data}, cluster.save_checkpoint)
        print(f"[funrl] step {step} failed; checkpoint of step {done} written", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - the original failure is what the user must see
        print(f"[funrl] step {step} failed, and so did the checkpoint of step {done}: {exc}", file=sys.stderr)


def run_eval(cluster: Cluster, clips, path: Path, progress: bool = True) -> EvalReport:
    """Greedy evaluation of the current policy on ``clips`` through the running workers."""
    report, records = evaluate(
        cluster.embed,
        lambda p: cluster.generate(p, greedy=True),
        clips,
        batch_size=cluster.cfg.rollout.embed_batch_size,
        progress=progress,
        normalizer=cluster.cfg.rewards.normalizer,
    )
    write_report(report, records, path)
    return report


def train_step(cfg: TrainConfig, cluster: Cluster, rollouts: StepRollouts, step: int) -> tuple[dict, ScoredRollout]:
    """One GRPO step; returns its metrics record and every group sampled, scored. The engines sample with seeds
    drawn from (``rollout.seed``, step, round), so a resumed run samples what an uninterrupted one would.
    ``run.async_steps=1``: step + 1 is sampled while the learner updates (`funrl.step_rollouts`)."""
    t = StageTimer()
    cluster.transfer.take()  # from here on, this step's messages (an evaluation's before it are not counted)
    sampled = rollouts.take(step, t)  # embed -> generate -> score (async: done during step - 1's update)
    v = None if sampled.batch is None else sampled.batch.rollout.policy_version
    lag = {} if v is None else {"policy_version.lag": cluster.policy_version - v}  # updates behind the learner
    rollouts.start(step + 1)  # async: step + 1 samples on these weights while the learner updates
    with t("learn"):
        stats = cluster.update(sampled.batch, max_lag=cfg.run.async_steps) if sampled.batch is not None else None
    with t("wait"):
        rollouts.wait()  # the weights must not change under a generation
    with t("sync"):
        if stats is not None:
            cluster.sync()
    ahead = {f"time.{k}": v for k, v in sampled.seconds.items()}  # overlapped: not part of time.step
    record = step_record(sampled.scored, stats, sampled.info) | lag | ahead | t.as_metrics()
    return record | cluster.transfer.take(), sampled.scored


def _progress(steps, total: int, done: int):
    from tqdm import tqdm

    return tqdm(steps, total=total, initial=done, desc="GRPO", unit="step", dynamic_ncols=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
        print("[funrl] config:\n" + dump_config(cfg), file=sys.stderr)
        out = train(cfg, resume=bool(args.resume))
    except (ConfigError, ManifestError, rewards.RewardError, FileNotFoundError, RunLockedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (WorkerError, FloatingPointError, CheckpointWriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Preempted as exc:
        print(f"[funrl] {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"[funrl] run folder: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
