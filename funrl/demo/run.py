"""The built-in demo behind ``python -m funrl.train`` with no arguments.

It builds (or reuses) the synthetic speech data in ``data/demo`` (``FUNRL_DEMO_DATA`` moves it), starts
from the shipped SFT model (``funrl/demo/assets/start_model``), and returns a `TrainConfig` from
``funrl/demo/grpo.yaml`` with the data and model paths filled in; the user's dotted overrides apply on
top. Training then evaluates on the test split, runs GRPO and prints the before/after table.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from funrl.config import TrainConfig, load_config
from funrl.demo import start_model_dir
from funrl.demo.build import build_demo_data
from funrl.demo.plan import DEFAULT_DEMO_SIZE, PRESETS, DemoSizes

GRPO_CONFIG = Path(__file__).resolve().parent / "grpo.yaml"
DEMO_SIZES = tuple(PRESETS)
# The reduced run CI uses: the same path end to end, in about a minute.
SMALL_OVERRIDES = ("run.steps=2", "run.clips_per_step=4", "data.noise_per_step=1", "rollout.n=4", "run.save_every=2")


def demo_data_dir(size: str) -> Path:
    # absolute: a run's config.yaml names its manifests, and --resume may run from another directory
    root = Path(os.environ.get("FUNRL_DEMO_DATA", "data/demo")).absolute()
    return root if size == "full" else root.with_name(f"{root.name}-{size}")


def demo_config(overrides: Sequence[str] = (), size: str = DEFAULT_DEMO_SIZE) -> TrainConfig:
    """The demo's config: data built (or reused) first, then ``grpo.yaml`` + paths + ``overrides``."""
    if size not in DEMO_SIZES:
        raise ValueError(f"demo size must be one of {DEMO_SIZES}, got {size!r}")
    own_model = any(o.startswith("model.path=") for o in overrides)
    model = None if own_model else start_model_dir()
    print(
        f"[funrl] built-in demo ({size}): speech data in {demo_data_dir(size)}"
        + (f", starting model {model}" if model else ""),
        flush=True,
    )
    splits = ("rl_train", "dev", "test")  # GRPO trains on rl_train: no need to render sft_train
    paths = build_demo_data(demo_data_dir(size), seed=0, sizes=DemoSizes.preset(size), splits=splits)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = [
        f"data.train_manifest={paths.manifest('rl_train')}",
        f"data.eval_manifest={paths.manifest('dev')}",
        f"data.test_manifest={paths.manifest('test')}",
        f"run.out_dir=runs/demo-{stamp}",
    ]
    if model is not None:
        base.append(f"model.path={model}")
    if size == "small":
        base += SMALL_OVERRIDES
    return load_config(str(GRPO_CONFIG), [*base, *overrides])
