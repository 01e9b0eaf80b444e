"""Weights broadcast from learner rank 0 straight into the rollout engines (the ``collective`` weight sync).

A process group of its own joins learner rank 0 (rank 0 of the group) and every engine (ranks 1..E): built from a
``TCPStore`` and a backend object, it is *stateless* — no ``init_process_group``, so it lives beside the FSDP
group of the learner ranks and never touches it (the way OpenRLHF and verl join trainer and vLLM). Backend: gloo
on CPU, NCCL on GPU.

Both sides cut the same buckets (`policy.buckets.iter_buckets`): the learner from its gathered tensors, the engines
from the weights' description (`WeightMeta`: name, shape, dtype of each, in state-dict order, taken once). Each
bucket travels as one flat buffer in one ``broadcast``; an engine views it back into tensors and reloads them, so
no object store, no file and no second full copy of the weights is involved on either side.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from policy.buckets import iter_buckets, send_buckets

WeightMeta = list[tuple[str, tuple[int, ...], str]]  # (name, shape, dtype name) per tensor, in sending order
NamedTensors = list[tuple[str, Tensor]]


def open_group(host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float) -> Any:
    """Join the weight group as ``rank`` of ``world_size`` (rank 0 hosts the store); blocks until all have joined."""
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world_size)
    raise ValueError(f"weight group backend must be gloo or nccl, got {backend!r}")


def describe(named: Iterable[tuple[str, Tensor]]) -> WeightMeta:
    """The `WeightMeta` of a stream of tensors (each dropped once described)."""
    return [(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in named]


def _meta_nbytes(value: tuple[tuple[int, ...], str]) -> int:
    shape, dtype = value
    return math.prod(shape) * torch.empty(0, dtype=getattr(torch, dtype)).element_size()


class _Broadcaster:
    """`send_buckets`' sender for rank 0 of the weight group: each bucket as one flat buffer, broadcast
    asynchronously; the previous bucket's broadcast is awaited after the next one is posted, so one bucket
    travels while the next is gathered. ``group`` None: sends nothing (the other learner ranks)."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self._previous: tuple[Any, Tensor] | None = None  # (work, buffer): the buffer lives until its work is done

    def __call__(self, bucket: NamedTensors) -> None:
        if self.group is None:
            return
        flat = torch.cat([t.reshape(-1) for _, t in bucket]) if len(bucket) > 1 else bucket[0][1].reshape(-1)
        flat = flat.contiguous()
        work = self.group.broadcast(flat, 0)
        self.finish()
        self._previous = (work, flat)

    def finish(self) -> None:
        previous, self._previous = self._previous, None
        if previous is not None:
            previous[0].wait()


def broadcast_buckets(group: Any, buckets: Iterable[NamedTensors]) -> dict[str, float]:
    """Rank 0 of the weight group: each bucket as one flat buffer (its tensors share one dtype), sent
    asynchronously: bucket k travels while bucket k + 1 is gathered (at most two in flight, as the object-store
    sender). ``group`` None: consume the buckets without sending (the other learner ranks, which take part in
    the gathers). As with the object-store sender (`policy.buckets.send_buckets`), a failing broadcast stops the
    sending but not the gathers, and is raised once every bucket is through. Returns the seconds, buckets and
    bytes sent."""
    return send_buckets(buckets, _Broadcaster(group), finish=True)


def receive_buckets(group: Any, meta: WeightMeta, bucket_bytes: int, device: torch.device) -> Iterator[NamedTensors]:
    """An engine of the weight group: the buckets rank 0 broadcasts, as ``(name, tensor)`` views of one buffer
    each, cut from ``meta`` exactly as the sender cuts its tensors. The next bucket's receive is posted before a
    bucket is handed out, so it travels while the caller reloads this one."""
    described = [(name, (shape, dtype)) for name, shape, dtype in meta]
    buckets = list(iter_buckets(described, bucket_bytes, nbytes=_meta_nbytes))

    def post(bucket: list) -> tuple[Tensor, Any]:
        dtype = getattr(torch, bucket[0][1][1])
        if any(d != bucket[0][1][1] for _, (_, d) in bucket):
            raise ValueError("receive_buckets: a bucket mixes dtypes; the learner casts every tensor to one")
        flat = torch.empty(sum(math.prod(shape) for _, (shape, _) in bucket), dtype=dtype, device=device)
        return flat, group.broadcast(flat, 0)

    pending = post(buckets[0]) if buckets else None
    for i, bucket in enumerate(buckets):
        assert pending is not None
        flat, work = pending
        work.wait()
        pending = post(buckets[i + 1]) if i + 1 < len(buckets) else None
        views = torch.split(flat, [math.prod(shape) for _, (shape, _) in bucket])
        yield [(name, v.view(shape)) for (name, (shape, _)), v in zip(bucket, views)]
