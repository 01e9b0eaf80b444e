"""Cutting a stream of ``(name, tensor)`` into buckets of bounded size: the one bucketing helper of the weight
sync, used by the learner (what it sends) and the rollout worker (what it reloads at once)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch import Tensor

NamedTensors = list[tuple[str, Tensor]]


def tensor_nbytes(tensor: Tensor) -> int:
    """Bytes the tensor's elements occupy."""
    return tensor.numel() * tensor.element_size()


def iter_buckets(
    items: Iterable[tuple[str, Any]], bucket_bytes: int, nbytes: Callable[[Any], int] = tensor_nbytes
) -> Iterator[list[tuple[str, Any]]]:
    """Group a stream of ``(name, tensor)`` into buckets of at most ``bucket_bytes`` each.

    Order is preserved; the input is consumed lazily, so at most one bucket is held
    at a time. A tensor larger than ``bucket_bytes`` forms a bucket of its own.
    Empty buckets are never yielded. ``nbytes``: the size of an item's value (a tensor's by default; the
    collective sync cuts the same buckets from ``(name, (shape, dtype))`` descriptions on the receiving side).
    """
    if bucket_bytes <= 0:
        raise ValueError(f"iter_buckets: bucket_bytes must be > 0, got {bucket_bytes}")
    bucket: list[tuple[str, Any]] = []
    size = 0
    for name, value in items:
        n = nbytes(value)
        if bucket and size + n > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, value))
        size += n
    if bucket:
        yield bucket


def send_buckets(
    buckets: Iterable[NamedTensors], send: Callable[[NamedTensors], None], finish: bool
) -> dict[str, float]:
    """Hand every bucket to ``send``, then call ``send.finish()`` (if it has one and ``finish``).

    The buckets come from a collective gather, so a failing ``send`` stops the sending but not the iteration
    (the other ranks are in the same collectives): the error is raised once every bucket is through.
    Returns the seconds, the bucket count and the bytes (of the tensors as sent).
    """
    start, count, nbytes = time.perf_counter(), 0, 0
    error: BaseException | None = None
    for bucket in buckets:
        count += 1
        nbytes += sum(tensor_nbytes(t) for _, t in bucket)
        if error is None:
            try:
                send(bucket)
            except Exception as exc:  # noqa: BLE001 - re-raised once every bucket is through
                error = exc
    if error is not None:
        raise error
    if finish and hasattr(send, "finish"):
        send.finish()
    return {"seconds": time.perf_counter() - start, "buckets": float(count), "bytes": float(nbytes)}
