"""``lora_adapter``: learner rank 0 writes the LoRA adapter as a peft folder (``OUT/rollout_lora/vNNNNNN``) and
every engine serves it as a new adapter id. The base weights never move; the folder of the version before is
kept (an engine may still be reading it), older ones are removed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from policy.ray_utils import get_named


class LoraAdapterSync:
    name = "lora_adapter"
    feeds_engines = True

    def __init__(self, learner: Any, engines: list, folder: Path, timeout_s: float | None) -> None:
        self.learner = learner
        self.engines = engines  # the cluster's list: a restarted engine replaces its entry
        self.folder = Path(folder)
        self.timeout_s = timeout_s
        self.path: str | None = None  # the adapter the engines serve, for a restarted one
        self.version = 0

    def push(self, version: int) -> None:
        if self.path is None or self.version != version:  # a retried push after a restart reuses the export
            self.path = self.learner.export_adapter(str(self.folder / f"v{version:06d}"))
            self.version = version
        path = self.path
        get_named(
            [(f"rollout worker {i}", e.set_lora.remote(path, version)) for i, e in enumerate(self.engines)],
            timeout_s=self.timeout_s,
        )
        for old in self.folder.glob("v*"):
            if old.name[1:].isdigit() and int(old.name[1:]) < version - 1:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, engine: Any, index: int, version: int) -> None:
        if self.path is not None:
            get_named([(f"rollout worker {index}", engine.set_lora.remote(self.path, version))], self.timeout_s)
