"""``python -m funrl.export RUN_DIR --out DIR``: a training run's checkpoint as a plain model folder.

The folder has the starting model's own format — an ``encoder_adapter_llm`` folder, or transformers' own
layout for ``qwen2_audio`` / ``fun_asr_nano`` / ... — with the RL-tuned weights (LoRA merged), so that
``load_audio_llm``, ``python -m funrl.eval --model DIR``, transformers' ``from_pretrained`` and a further
``python -m funrl.train model.path=DIR`` read it as they read the original (docs/checkpoints.md: weight names
of the transformers families). ``--llm-only`` writes the decoder LLM alone as a plain HF causal-LM folder
(text-only serving, e.g. ``vllm serve DIR``).

It runs in this process, without Ray: a 1-rank learner is set up from RUN_DIR/config.yaml (model.path is
the starting model), the checkpoint's trained weights are loaded into it (no optimizer state), and
`policy.learner.Learner.save_model` writes the folder.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from funrl.checkpoint import COMPLETE, STATE_FILE, Checkpoint, CheckpointManager

EPILOG = """\
examples:
  python -m funrl.export runs/my-run --out models/my-asr-rl               # the latest checkpoint
  python -m funrl.export runs/my-run --out models/my-asr-rl --step 200
  python -m funrl.export runs/my-run --out models/my-llm --llm-only       # the LLM alone (vllm serve)
  python -m funrl.export runs/my-run --out models/my-asr-rl --dtype bfloat16

exit status: 0 written; 2 bad input (no run folder, no or incomplete checkpoint, --out not empty ...).
"""


class ExportError(Exception):
    """Bad input; the message says what to do. Exit status 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m funrl.export",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder (run.out_dir: config.yaml, checkpoints/)")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (must not exist, or be empty)")
    p.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the latest complete one)")
    p.add_argument("--llm-only", action="store_true", help="write the LLM alone as a plain HF causal-LM folder")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="dtype of the written weights (default float32: the learner's master weights)",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the learner runs (default cpu)")
    return p.parse_args(argv)


def find_checkpoint(run_dir: Path, step: int | None) -> Checkpoint:
    """The complete checkpoint of ``run_dir`` at ``step`` (latest when None), or ExportError saying why not."""
    manager = CheckpointManager(run_dir)
    done = manager.all()
    if step is None:
        if done:
            return done[-1]
        partial = sorted(p.name for p in manager.root.glob("*")) if manager.root.is_dir() else []
        hint = f" (only incomplete ones: {', '.join(partial)})" if partial else ""
        raise ExportError(
            f"{run_dir}: no complete checkpoint in {manager.root}{hint}; train with run.save_every=N to write some"
        )
    for ckpt in done:
        if ckpt.step == step:
            return ckpt
    folder = manager.root / f"step_{step:06d}"
    if folder.is_dir():
        missing = [n for n in (COMPLETE, STATE_FILE) if not (folder / n).is_file()]
        raise ExportError(
            f"{folder}: incomplete checkpoint (no {' / '.join(missing)}): it was being written when the run stopped"
        )
    steps = ", ".join(str(c.step) for c in done) or "none"
    raise ExportError(f"{run_dir}: no checkpoint for step {step}; complete checkpoints: {steps}")


def check_inputs(args: argparse.Namespace):
    """(TrainConfig, learner checkpoint folder) of a valid request, or ExportError."""
    from funrl.config import ConfigError, load_config
    from policy.learner_state import STATE_FILE as LEARNER_STATE

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is not a folder (give the run folder, run.out_dir of the training config)")
    if not (run_dir / "config.yaml").is_file():
        raise ExportError(f"{run_dir}/config.yaml is missing: not a training run folder (run.out_dir)")
    try:
        cfg = load_config(str(run_dir / "config.yaml"), [])
    except ConfigError as exc:
        raise ExportError(f"{run_dir}/config.yaml: {exc}") from None
    from policy.models.hub import resolve_model_path

    try:  # a run's config.yaml holds a folder; one written by hand may hold a Hub id (the local HF cache)
        folder = resolve_model_path(cfg.model.path, key="model.path")
    except FileNotFoundError as exc:
        raise ExportError(
            f"{run_dir}/config.yaml: {exc}; the export needs the starting model the run was trained from"
        ) from None
    cfg = replace(cfg, model=replace(cfg.model, path=str(folder)))
    learner_dir = find_checkpoint(run_dir, args.step).path / "learner"
    if not (learner_dir / LEARNER_STATE).is_file() or not (learner_dir / "dcp").is_dir():
        raise ExportError(f"{learner_dir}: incomplete learner checkpoint ({LEARNER_STATE} or dcp/ missing)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out} exists and is not an empty folder; choose a new folder")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ExportError("--device cuda: no CUDA device is visible")
    return cfg, learner_dir


def export(
    cfg, learner_dir: Path, out: str, llm_only: bool = False, dtype: str = "float32", device: str = "cpu"
) -> str:
    """Set up a 1-rank learner of ``cfg``, load ``learner_dir``'s weights, save the model to ``out``."""
    from policy.distributed import free_port
    from policy.learner import Learner
    from policy.learner_state import read_learner_info
    from policy.model_export import load_policy_weights

    saved = read_learner_info(learner_dir).get("finetune")
    if saved != cfg.learner.finetune:
        raise ExportError(
            f"{learner_dir}: saved with learner.finetune={saved!r} but config.yaml says {cfg.learner.finetune!r}"
        )
    lcfg = replace(cfg.learner, num_ranks=1, gpus_per_rank=1.0 if device == "cuda" else 0.0)
    learner = Learner(
        cfg.model.path,
        cfg.model,
        lcfg,
        0,
        1,
        "127.0.0.1",
        free_port(),
        total_steps=cfg.run.steps,
        max_audio_seconds=cfg.data.max_audio_seconds,
        temperature=cfg.rollout.temperature,
        max_new_tokens=cfg.rollout.max_new_tokens,
    )
    try:
        learner.setup()
        learner.ref_root = None  # the frozen reference is for updates only: free its copy of the model
        load_policy_weights(learner_dir, learner.root)
        return learner.save_model(out, llm_only=llm_only, dtype=dtype)
    finally:
        learner.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        cfg, learner_dir = check_inputs(args)
        print(f"[funrl.export] {learner_dir.parent} -> {args.out}", file=sys.stderr)
        # held while read: a training run still writing checkpoints does not prune this one meanwhile
        with Checkpoint(0, learner_dir.parent).reading():
            out = export(cfg, learner_dir, args.out, llm_only=args.llm_only, dtype=args.dtype, device=args.device)
    except (ExportError, FileNotFoundError, ValueError) as exc:  # bad input (a broken model folder ...)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    what = "LLM (HF causal-LM folder)" if args.llm_only else "model"
    print(f"[funrl.export] wrote the {what} to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
