"""Streaming full weights to the rollout engine in bounded buckets (pure functions).

The learner gathers its full state dict one tensor at a time; :func:`iter_buckets` (`policy.buckets`, the one
bucketing helper both sides use) cuts that stream into buckets of at most ``bucket_bytes`` so that the sender
never holds more than one bucket. The receiving side (``VLLMRolloutWorker.update_weights``) must not split one
vLLM module across two reloads: vLLM fuses q/k/v and gate/up into one parameter, and an in-place reload of a
module that receives only some of its weights leaves the rest uninitialised. :func:`split_trailing_group` holds
back the tensors of the last *module group* of a bucket (a decoder layer, or a top-level module such as the
embedding) until the next bucket or the end of the update.
"""

from __future__ import annotations

from torch import Tensor

from policy.buckets import iter_buckets, tensor_nbytes

__all__ = ["NamedTensors", "iter_buckets", "module_group", "split_trailing_group", "tensor_nbytes"]

NamedTensors = list[tuple[str, Tensor]]


def module_group(name: str) -> str:
    """The unit that must be reloaded whole: the prefix up to the first numeric component
    (``model.layers.3.self_attn.q_proj.weight`` -> ``model.layers.3``), else the parameter's
    module (``model.embed_tokens.weight`` -> ``model.embed_tokens``)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) if len(parts) > 1 else name


def split_trailing_group(named_tensors: NamedTensors) -> tuple[NamedTensors, NamedTensors]:
    """Split off the tensors of the last module group: ``(complete, trailing)``.

    The trailing group may continue in the next bucket, so it is loaded later. Tensors of
    one group must be contiguous in the stream (state-dict order is).
    """
    if not named_tensors:
        return [], []
    last = module_group(named_tensors[-1][0])
    cut = len(named_tensors)
    while cut > 0 and module_group(named_tensors[cut - 1][0]) == last:
        cut -= 1
    return named_tensors[:cut], named_tensors[cut:]
