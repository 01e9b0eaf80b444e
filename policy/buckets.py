"""Cutting a stream of ``(name, tensor)`` into buckets of bounded size: the one bucketing helper of the weight
sync, used by the learner (what it sends) and the rollout worker (what it reloads at once)."""

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
