"""Copy a finished `python -m funrl.sft` run into the repo as the demo's starting model.

    python scripts/ship_demo_model.py runs/sft_whisper_demo            # -> funrl/demo/assets/

Writes ``start_model/`` (the run's ``model/``), ``sft_config.yaml`` and ``train_log.jsonl`` under the assets
folder, each replaced atomically (temp path + rename). ``--encoder-dtype float16`` stores the frontend's
``encoder.*`` tensors in half precision: lossless for a frozen pretrained Whisper encoder, whose weights come
in float16 (CTranslate2) in the first place; the model layer casts them back to the model's dtype on load.
Everything else (adapter, LLM) stays in the precision the run saved.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from policy.models.base import atomic_dir

ASSETS = Path(__file__).resolve().parents[1] / "funrl" / "demo" / "assets"
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def cast_encoder(frontend_file: Path, dtype: torch.dtype) -> tuple[int, int]:
    """Rewrite ``encoder.*`` float tensors of a frontend.safetensors in ``dtype``; (bytes before, after)."""
    before = frontend_file.stat().st_size
    state = load_file(str(frontend_file))
    state = {k: v.to(dtype) if k.startswith("encoder.") and v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(frontend_file), metadata={"format": "pt"})
    return before, frontend_file.stat().st_size


def _replace(src: Path, dst: Path) -> None:
    """Put a copy of the file ``src`` at ``dst`` through a temp file in the same folder + rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ship(run: Path, assets: Path, encoder_dtype: str) -> None:
    model = run / "model"
    if not (model / "config.json").is_file():
        raise SystemExit(f"{model} holds no model (config.json missing): is {run} a finished funrl.sft run?")
    with atomic_dir(assets / "start_model") as staged:
        shutil.copytree(model, staged, dirs_exist_ok=True)
        if encoder_dtype != "float32":
            before, after = cast_encoder(staged / "frontend.safetensors", DTYPES[encoder_dtype])
            print(f"frontend.safetensors: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB (encoder in {encoder_dtype})")
    for name, dst in (("config.yaml", "sft_config.yaml"), ("train_log.jsonl", "train_log.jsonl")):
        if (run / name).is_file():
            _replace(run / name, assets / dst)
    total = sum(f.stat().st_size for f in (assets / "start_model").rglob("*") if f.is_file())
    print(f"shipped {run} -> {assets / 'start_model'} ({total / 1e6:.1f} MB)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a funrl.sft output folder (holds model/, config.yaml, train_log.jsonl)")
    p.add_argument("--assets", type=Path, default=ASSETS, help="where start_model/ goes (default: %(default)s)")
    p.add_argument("--encoder-dtype", choices=tuple(DTYPES), default="float16")
    args = p.parse_args(argv)
    ship(args.run, args.assets, args.encoder_dtype)


if __name__ == "__main__":
    sys.exit(main())
