"""``object_store``: full weights (LoRA merged) streamed from learner rank 0 to every engine in buckets through
Ray's object store (`policy.learner_group.RolloutSender`), reloaded in place by vLLM (`reload_weights`)."""

from __future__ import annotations

from typing import Any


class ObjectStoreSync:
    name = "object_store"
    feeds_engines = True

    def __init__(self, learner: Any, engines: list, bucket_bytes: int, dtype: str) -> None:
        self.learner = learner
        self.engines = engines  # the cluster's list: a restarted engine replaces its entry
        self.bucket_bytes = bucket_bytes
        self.dtype = dtype  # the engines' dtype: what is cast to and sent

    def push(self, version: int) -> None:
        self.learner.push_weights(self.engines, self.bucket_bytes, dtype=self.dtype, version=version)

    def restore(self, engine: Any, index: int, version: int) -> None:
        self.learner.push_weights([engine], self.bucket_bytes, dtype=self.dtype, version=version)
