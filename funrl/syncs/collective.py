"""``collective``: full weights broadcast from learner rank 0 straight into every engine over a process group of
their own (`policy.weight_broadcast`: gloo on CPU, NCCL on GPU), in buckets that each engine reloads as they
arrive. No object store and no file; on GPU no host copy either.

The group is opened on the first push (rank 0 of the learner hosts its store on a free port of its node). A
restarted engine cannot join a group that is already formed, so `restore` opens a new one with every engine and
pushes the current weights to all of them.
"""

from __future__ import annotations

from typing import Any

from policy.ray_utils import WorkerError, get_named


class CollectiveSync:
    name = "collective"
    feeds_engines = True

    def __init__(self, learner: Any, engines: list, bucket_bytes: int, dtype: str, backend: str, timeout_s: float):
        self.learner = learner
        self.engines = engines  # the cluster's list: a restarted engine replaces its entry
        self.bucket_bytes = bucket_bytes
        self.dtype = dtype  # the engines' dtype: what is cast to and broadcast
        self.backend = backend
        self.timeout_s = timeout_s  # of the group's collectives, and of each engine's answer
        self.meta: list | None = None  # the weights' (name, shape, dtype), taken once
        self.open = False

    def _open_group(self) -> None:
        host, port = self.learner.free_address()
        world = 1 + len(self.engines)
        joins = [
            (f"rollout worker {i}", e.join_weight_group.remote(host, port, 1 + i, world, self.backend, self.timeout_s))
            for i, e in enumerate(self.engines)
        ]
        self.learner.join_weight_group(host, port, world, self.backend, self.timeout_s)
        get_named(joins, timeout_s=self.timeout_s)
        self.open = True

    def push(self, version: int) -> None:
        if self.meta is None:
            self.meta = self.learner.weight_meta(self.dtype)
        if not self.open:
            self._open_group()
        receives = [
            (f"rollout worker {i}", e.receive_weights.remote(self.meta, self.bucket_bytes, version))
            for i, e in enumerate(self.engines)
        ]
        try:
            self.learner.broadcast_weights(self.bucket_bytes, self.dtype)
        except WorkerError:
            self.open = False
            get_named(receives, timeout_s=self.timeout_s)  # an engine that failed is named (and restarted)
            raise
        get_named(receives, timeout_s=self.timeout_s)

    def restore(self, engine: Any, index: int, version: int) -> None:
        del engine, index  # already in self.engines: every engine joins the new group
        self.open = False
        self.push(version)
