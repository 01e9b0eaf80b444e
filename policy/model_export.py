"""Writing a trained policy back as a plain model folder and reading a learner checkpoint's
weights without its optimizer state. Helpers of `policy.learner.Learner.save_model` and `funrl.export`.

* `gathered_model_state` — (name, tensor) of the whole `AudioLLM` under the names of a *plain* (unsharded,
  non-LoRA) model: ``frontend.*`` (encoder + adapter, buffers included) then ``llm.*`` (LoRA merged). A
  collective over FSDP2 ranks: every rank must exhaust it; tensors arrive one at a time, so no rank ever holds
  a second full copy of the model besides the plain model it fills.
* `save_gathered_model` — the whole of `Learner.save_model`: gather into a plain model on rank 0, save it.
* `fill_model` — copy such a stream into a plain model's parameters and buffers, strictly (every key of the
  plain model exactly once, same shapes); it always consumes the whole stream (the other ranks are in the same
  collectives) and raises afterwards.
* `load_policy_weights` — the trainable weights of a `save_checkpoint` folder (DCP) into a set-up learner's
  sharded model, leaving the AdamW state out (an export needs no optimizer: that saves 2x the trainable
  parameters in memory).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

from policy.distributed import all_reduce
from policy.models import AudioLLM, load_audio_llm
from policy.models.base import atomic_dir

__all__ = ["fill_model", "gathered_model_state", "load_policy_weights"]


def _full(t: Tensor) -> Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def gathered_model_state(model: AudioLLM, llm_only: bool = False) -> Iterator[tuple[str, Tensor]]:
    """Collective: the full weights of ``model`` (maybe FSDP2-sharded, maybe LoRA) under plain names; see the
    module doc. ``llm_only``: the ``llm.*`` entries alone."""
    if not llm_only:
        for name, tensor in model.frontend.state_dict(keep_vars=True).items():
            yield f"frontend.{name}", _full(tensor.detach())
    for name, tensor in model.llm_state_dict():
        yield f"llm.{name}", tensor


def fill_model(
    model: nn.Module, named: Iterable[tuple[str, Tensor]], where: str = "", prefixes: tuple[str, ...] = ()
) -> nn.Module:
    """Copy ``named`` into ``model``'s state-dict tensors (cast to their dtype); strict over the keys that start
    with one of ``prefixes`` (all keys when empty). Consumes ``named`` to the end even after an error."""
    target = {k: v for k, v in model.state_dict().items() if not prefixes or k.startswith(prefixes)}
    seen: set[str] = set()
    unexpected: list[str] = []
    bad_shapes: list[str] = []
    with torch.no_grad():
        for name, tensor in named:
            dst = target.get(name)
            if dst is None:
                unexpected.append(name)
            elif tuple(dst.shape) != tuple(tensor.shape):
                bad_shapes.append(f"{name}: {tuple(tensor.shape)} vs {tuple(dst.shape)}")
            else:
                dst.copy_(tensor.to(device=dst.device, dtype=dst.dtype))
                seen.add(name)
    missing = sorted(set(target) - seen)
    if missing or unexpected or bad_shapes:
        raise ValueError(
            f"{where or 'fill_model'}: the trained weights do not match the plain model: "
            f"missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), "
            f"shape mismatches {bad_shapes[:5]}"
        )
    return model


def load_policy_weights(folder: str | Path, root: nn.Module) -> None:
    """Collective: the trainable weights that `policy.learner_state.save_learner_state` wrote into
    ``folder/dcp`` (any number of ranks), into ``root`` (the learner's sharded model); no optimizer state."""
    options = StateDictOptions(ignore_frozen_params=True)
    state = {"model": get_model_state_dict(root, options=options)}
    dcp.load(state, checkpoint_id=str(Path(folder) / "dcp"))
    set_model_state_dict(root, state["model"], options=StateDictOptions(ignore_frozen_params=True, strict=False))


def save_gathered_model(
    live: AudioLLM,
    model_dir: str,
    prompt: Any,
    folder: str,
    rank: int,
    device: torch.device,
    llm_only: bool = False,
    dtype: str = "float32",
) -> str:
    """Collective (`Learner.save_model`): the sharded ``live`` model's full weights, gathered one tensor at a
    time into a plain copy of the starting model (``model_dir``, loaded on rank 0 in ``dtype``), which rank 0
    saves atomically (``llm_only``: the LLM alone as a causal-LM folder). Every rank raises if rank 0 fails."""
    plain, error = None, None
    if rank == 0:
        try:
            plain = load_audio_llm(model_dir, dtype=dtype, prompt=prompt)
        except Exception as exc:  # noqa: BLE001 - raised on every rank below
            error = exc
    named = gathered_model_state(live, llm_only)
    if plain is None:
        for _ in named:  # the other ranks (and a failed rank 0) take part in the gathers
            pass
    else:
        try:
            fill_model(plain, named, f"save_model({folder})", prefixes=("llm.",) if llm_only else ())
            if llm_only:
                with atomic_dir(folder) as tmp:
                    plain.export_llm(tmp)
            else:
                plain.save(folder)
        except Exception as exc:  # noqa: BLE001 - raised on every rank below
            error = exc
    failed = all_reduce([0.0 if error is None else 1.0], op="max", device=device)[0]
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"save_model({folder}): rank 0 failed to write the model (see its error)")
    return str(Path(folder))
