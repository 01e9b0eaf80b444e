"""The one interface every weight sync implements (docs/design.md#weight-sync)."""

from __future__ import annotations

from typing import Any, Protocol


class WeightSync(Protocol):
    """Brings one kind of worker to the learner's weights after an update.

    ``push(version)`` runs on the driver after every update: it moves the learner's weights (the part this sync
    is responsible for) to its receivers, which serve them as policy ``version`` (the learner's update count;
    the engines stamp it on every `RolloutBatch` they sample). ``restore(engine, index, version)`` brings one
    restarted rollout engine to the current weights (a no-op for syncs that feed no engine).
    ``feeds_engines``: a failure in ``push`` may be a rollout engine's, to be retried after restarting it.
    """

    name: str
    feeds_engines: bool

    def push(self, version: int) -> None: ...

    def restore(self, engine: Any, index: int, version: int) -> None: ...
