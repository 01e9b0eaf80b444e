"""Wall-clock timing of the stages of a step (embed, generate, score, learn, sync), and the peak memory of a
process tree (benchmarks)."""

from __future__ import annotations

import threading
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


class TreeMemory:
    """Peak RSS and PSS summed over this process and all its descendants, sampled in a thread."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.peak_rss = self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil  # vLLM's and Ray's dependency

        root = psutil.Process()
        rss = pss = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
