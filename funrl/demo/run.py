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
from dataclasses import replace
from pathlib import Path
from typing import Any

from funrl.config import TrainConfig, load_config
from funrl.demo import start_model_dir
from funrl.demo.build import build_demo_data
from funrl.demo.plan import DEFAULT_DEMO_SIZE, PRESETS, DemoSizes

GRPO_CONFIG = Path(__file__).resolve().parent / "grpo.yaml"
DEMO_SIZES = tuple(PRESETS)
DEMO_SPLITS = {"train_manifest": "rl_train", "eval_manifest": "dev", "test_manifest": "test"}  # data key -> split
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
    # GRPO trains on rl_train: no need to render sft_train
    base = [f"data.{key}={path}" for key, path in demo_manifests(demo_data_dir(size), size, DEMO_SPLITS).items()]
    base.append(f"run.out_dir=runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if model is not None:
        base.append(f"model.path={model}")
    if size == "small":
        base += SMALL_OVERRIDES
    return load_config(str(GRPO_CONFIG), [*base, *overrides])


def with_demo_data(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with each of ``data.train_manifest`` / ``eval_manifest`` / ``test_manifest`` left "" set to the
    built-in demo's rl_train / dev / test split in ``data.demo_dir``, built there first (or reused: a folder
    `funrl.sft` built holds sft_train and dev, and only the missing splits are rendered). ``cfg`` itself when
    ``data.demo_dir`` is "" or every manifest is given. A recipe can so train on the demo data as written,
    in a fresh clone."""
    d = cfg.data
    wanted = {key: split for key, split in DEMO_SPLITS.items() if not getattr(d, key)}
    if not d.demo_dir or not wanted:
        return cfg
    folder = Path(d.demo_dir).absolute()  # absolute: config.yaml names the manifests, --resume may run elsewhere
    print(f"[funrl] built-in demo data ({d.demo_size}) in {folder}: {', '.join(wanted.values())}", flush=True)
    filled: dict[str, Any] = demo_manifests(folder, d.demo_size, wanted)
    return replace(cfg, data=replace(d, **filled))


def demo_manifests(folder: Path, size: str, splits: dict[str, str]) -> dict[str, str]:
    """Each ``data`` key of ``splits`` (key -> demo split) -> the manifest of that split in ``folder``, the splits
    built there first (or reused)."""
    paths = build_demo_data(folder, seed=0, sizes=DemoSizes.preset(size), splits=tuple(splits.values()))
    return {key: str(paths.manifest(split)) for key, split in splits.items()}
