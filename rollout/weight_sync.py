"""Streaming full weights to the rollout engine in bounded buckets (pure functions).

The learner gathers its full state dict one tensor at a time; :func:`iter_buckets`
cuts that stream into buckets of at most ``bucket_bytes`` so that the sender never
holds more than one bucket. The receiving side (``VLLMRolloutWorker.update_weights``)
must not split one vLLM module across two reloads: vLLM fuses q/k/v and gate/up
into one parameter, and an in-place reload of a module that receives only some of
its weights leaves the rest uninitialised. :func:`split_trailing_group` holds back
the tensors of the last *module group* of a bucket (a decoder layer, or a top-level
module such as the embedding) until the next bucket or the end of the update.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from torch import Tensor

NamedTensors = list[tuple[str, Tensor]]


def tensor_nbytes(tensor: Tensor) -> int:
    """Bytes the tensor's elements occupy."""
    return tensor.numel() * tensor.element_size()


def iter_buckets(named_tensors: Iterable[tuple[str, Tensor]], bucket_bytes: int) -> Iterator[NamedTensors]:
    """Group a stream of ``(name, tensor)`` into buckets of at most ``bucket_bytes`` each.

    Order is preserved; the input is consumed lazily, so at most one bucket is held
    at a time. A tensor larger than ``bucket_bytes`` forms a bucket of its own.
    Empty buckets are never yielded.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"iter_buckets: bucket_bytes must be > 0, got {bucket_bytes}")
    bucket: NamedTensors = []
    size = 0
    for name, tensor in named_tensors:
        nbytes = tensor_nbytes(tensor)
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


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
