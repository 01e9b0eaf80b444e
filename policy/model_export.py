"""Writing a trained policy back as a plain model folder (issue 7 item 5), and reading a learner checkpoint's
weights without its optimizer state. Helpers of `policy.learner.Learner.save_model` and `funrl.export`.

* `gathered_model_state` — (name, tensor) of the whole `AudioLLM` under the names of a *plain* (unsharded,
  non-LoRA) model: ``frontend.*`` (encoder + adapter, buffers included) then ``llm.*`` (LoRA merged). A
  collective over FSDP2 ranks: every rank must exhaust it; tensors arrive one at a time, so no rank ever holds
  a second full copy of the model besides the plain model it fills.
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

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

from policy.models import AudioLLM

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
