"""Wall-clock timing of the stages of a step (embed, generate, score, learn, sync)."""

from __future__ import annotations

import time
from contextlib import contextmanager


class StageTimer:
    """``with timer("generate"): ...`` accumulates seconds per stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    def as_metrics(self, prefix: str = "time.") -> dict[str, float]:
        out = {prefix + k: v for k, v in self.seconds.items()}
        out[prefix + "step"] = sum(self.seconds.values())
        return out
