"""Learner state that outlives a process: the LR schedule and checkpoints with torch.distributed.checkpoint.

A learner checkpoint folder holds (written exactly into the folder the caller names; the driver makes it
atomic with a temp dir + rename)::

    dcp/                    model (trainable parameters only: the LoRA adapter, or the LLM [+ frontend]) and
                            AdamW state, sharded by DCP (loads into any number of ranks). Every trainable
                            parameter has AdamW state, zeros with step 0 ("never stepped") for one that has
                            had no gradient yet (the CTC head in GRPO); checkpoints written before that rule
                            lack those entries and load with no state for them, as in the run that wrote them
    learner.json            scheduler state, update counter, world size, fine-tuning mode (rank 0)
    rng_rank{r}.json        python / numpy RNG state of rank r
    rng_rank{r}.safetensors torch CPU (+ CUDA) RNG state of rank r
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.optim.lr_scheduler import LambdaLR

from policy.distributed import all_reduce

STATE_FILE = "learner.json"
_OPTIONS = StateDictOptions(ignore_frozen_params=True)
# frozen parameters come from the model folder; `_checked_against` fails on a trainable key the checkpoint lacks;
# not strict for the optimizer: a parameter without saved state (older checkpoints) keeps none
_LOAD_OPTIONS = StateDictOptions(ignore_frozen_params=True, strict=False)


def lr_multiplier(step: int, schedule: str, warmup_steps: int, total_steps: int | None) -> float:
    """Factor on the base LR for update number ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` updates (the first update
    already moves). Then ``constant`` = 1; ``linear`` = 1 - p; ``cosine`` = (1 + cos(pi p)) / 2, with
    p = (step - warmup) / (total - warmup) clamped to [0, 1] (so the LR reaches 0 at ``total_steps``).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if total_steps is None:
        raise ValueError(f"learner.lr_schedule={schedule!r} needs the total number of steps (total_steps)")
    p = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    if schedule == "linear":
        return 1.0 - p
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown learner.lr_schedule {schedule!r}; use constant, linear or cosine")


class ScheduleFn:
    """Picklable LambdaLR function (a plain object instead of a closure)."""

    def __init__(self, schedule: str, warmup_steps: int, total_steps: int | None) -> None:
        lr_multiplier(0, schedule, warmup_steps, total_steps)  # fail now on a bad combination
        self.schedule, self.warmup_steps, self.total_steps = schedule, warmup_steps, total_steps

    def __call__(self, step: int) -> float:
        return lr_multiplier(step, self.schedule, self.warmup_steps, self.total_steps)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, total_steps: int | None) -> LambdaLR:
    return LambdaLR(optimizer, ScheduleFn(cfg.lr_schedule, cfg.warmup_steps, total_steps))


def _scheduler_state(scheduler: LambdaLR) -> dict[str, Any]:
    state = scheduler.state_dict()
    state.pop("lr_lambdas", None)  # the function is rebuilt from the config
    return state


def save_rng_state(folder: Path, rank: int) -> None:
    """This process's python, numpy (global) and torch RNG states into ``rng_rank{rank}.json/.safetensors``."""
    np_state: Any = np.random.get_state()  # the legacy tuple (kind, keys, pos, has_gauss, gauss)
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    (folder / f"rng_rank{rank}.json").write_text(json.dumps(meta))
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(folder / f"rng_rank{rank}.safetensors"))


def load_rng_state(folder: Path, rank: int) -> bool:
    """Restore what `save_rng_state` wrote for ``rank``; False (states untouched) when it wrote nothing."""
    meta_path, tensor_path = folder / f"rng_rank{rank}.json", folder / f"rng_rank{rank}.safetensors"
    if not (meta_path.is_file() and tensor_path.is_file()):
        return False  # saved with fewer ranks: this rank keeps its seeded state
    meta = json.loads(meta_path.read_text())
    tensors = load_file(str(tensor_path))
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    return True


def fill_never_stepped_state(optimizer: torch.optim.Optimizer) -> int:
    """Give every Adam/AdamW parameter without state the state of one never stepped; returns how many.

    AdamW creates a parameter's state (step 0, zero moments) lazily at its first gradient and skips
    parameters whose grad is None, so a parameter that never got a gradient (the CTC head in GRPO) has none.
    The state made here is exactly what that first step would create, so the optimizer behaves the same with
    it; the checkpoint then holds state for every trainable parameter. Other optimizers are left alone.
    """
    if not isinstance(optimizer, torch.optim.Adam):  # AdamW is an Adam
        return 0
    filled = 0
    for group in optimizer.param_groups:
        on_param = group["capturable"] or group["fused"]
        step_dtype = torch.float32 if group["fused"] or torch.get_default_dtype() != torch.float64 else torch.float64
        moments = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])
        for p in group["params"]:
            if optimizer.state.get(p):
                continue
            state = {"step": torch.zeros((), dtype=step_dtype, device=p.device if on_param else "cpu")}
            state |= {name: torch.zeros_like(p, memory_format=torch.preserve_format) for name in moments}
            optimizer.state[p] = state
            filled += 1
    return filled


def _checked_against(checkpoint: Path, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with the optimizer entries the checkpoint has no keys for left out; fails on a missing weight.

    A checkpoint written before `fill_never_stepped_state` has no AdamW state for parameters that had no
    gradient: leaving them out of what is loaded leaves them without state, as in the run that wrote it.
    """
    saved = dcp.FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    missing = [k for k in state["model"] if f"model.{k}" not in saved]
    if missing:
        raise RuntimeError(
            f"{checkpoint.parent}: the checkpoint has no weights for {len(missing)} trainable parameter(s) of this "
            f"model, e.g. {', '.join(missing[:3])}; it was written for another model or other trainable parts "
            "(model.path, model.train_encoder, learner.finetune)"
        )
    optim_state = {
        fqn: entry
        for fqn, entry in state["optim"]["state"].items()
        if any(f"optim.state.{fqn}.{key}" in saved for key in entry)
    }
    return {"model": state["model"], "optim": {**state["optim"], "state": optim_state}}


def check_finite_weights(root: nn.Module, where: str, device: torch.device) -> None:
    """Collective: FloatingPointError naming the first non-finite trainable weight (this rank's shard), raised
    on every rank, before a checkpoint is written."""
    bad = next(
        (
            name
            for name, p in root.named_parameters()
            if p.requires_grad
            and not bool(torch.isfinite(p.detach().to_local() if hasattr(p, "to_local") else p.detach()).all())
        ),
        None,
    )
    if all_reduce([0.0 if bad is None else 1.0], op="max", device=device)[0]:
        raise FloatingPointError(
            f"{where}: trainable weights are NaN/inf ({bad or 'on another rank'}); "
            "not written, so the last checkpoint stays the newest good one"
        )


def save_learner_state(
    folder: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    rank: int,
    info: dict[str, Any],
) -> Path:
    """Collective (every rank calls it): DCP model + optimizer, rank 0's json, every rank's RNG."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fill_never_stepped_state(optimizer)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_OPTIONS)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder / "dcp"))
    if rank == 0:
        state = {**info, "scheduler": _scheduler_state(scheduler)}
        (folder / STATE_FILE).write_text(json.dumps(state, indent=1))
    save_rng_state(folder, rank)
    return folder


def read_learner_info(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / STATE_FILE
    if not path.is_file() or not (Path(folder) / "dcp").is_dir():
        raise FileNotFoundError(
            f"{folder} is not a learner checkpoint ({STATE_FILE} or dcp/ missing); "
            "pass the folder that save_checkpoint wrote"
        )
    return json.loads(path.read_text())


def load_learner_state(
    folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LambdaLR, rank: int
) -> dict[str, Any]:
    """Collective: restore what `save_learner_state` wrote (any world size); returns the saved info."""
    folder = Path(folder)
    info = read_learner_info(folder)
    base_lrs = list(scheduler.base_lrs)  # this config's learner.lr
    fill_never_stepped_state(optimizer)  # the templates DCP loads into (without: a zero-gradient step to make them)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_OPTIONS)
    state = _checked_against(folder / "dcp", {"model": model_sd, "optim": optim_sd})
    dcp.load(state, checkpoint_id=str(folder / "dcp"))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=_LOAD_OPTIONS
    )
    sched = dict(info["scheduler"])
    sched["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
    scheduler.load_state_dict(sched)
    _schedule_from_config(optimizer, scheduler, base_lrs)
    load_rng_state(folder, rank)
    return info


def _schedule_from_config(optimizer: torch.optim.Optimizer, scheduler: LambdaLR, base_lrs: list[float]) -> None:
    """The next update's LR from this config's schedule at the saved update count: the LR the checkpoint holds
    is where the saved schedule had got to, which for a run resumed with more run.steps (or another learner.lr)
    is not this one's (a cosine run of 80 steps resumed to 200 would take step 81 at LR 0). Unchanged config:
    the same value, computed by the same expression."""
    scheduler.base_lrs = base_lrs
    for group, base, fn in zip(optimizer.param_groups, base_lrs, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * fn(scheduler.last_epoch)
