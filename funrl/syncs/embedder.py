"""The embedding workers' sync: whatever they build prompts with that the learner trains. The encoder + adapter
(``model.train_encoder``) and the LLM's input embedding table (full fine-tuning: the prompts' text is embedded
with it), both gathered by learner rank 0, put in the object store once and read by every embedding worker
(they are small beside the LLM)."""

from __future__ import annotations

from typing import Any

import ray

from policy.ray_utils import get_named


class EmbedderSync:
    name = "embedder"
    feeds_engines = False

    def __init__(
        self, learner: Any, embedders: list, frontend: bool, input_table: bool, timeout_s: float | None
    ) -> None:
        self.learner = learner
        self.embedders = list(embedders)
        self.frontend = frontend
        self.input_table = input_table
        self.timeout_s = timeout_s

    def push(self, version: int) -> None:
        del version  # the embedding workers stamp nothing
        if self.frontend:
            self._all("load_frontend_weights", self.learner.frontend_weights_for_sync())
        if self.input_table:
            self._all("load_input_embeddings", self.learner.input_embeddings_for_sync())

    def restore(self, engine: Any, index: int, version: int) -> None:
        pass  # feeds no engine

    def _all(self, method: str, weights: Any) -> None:
        ref = ray.put(weights)
        calls = [(f"embedding worker {i}", getattr(e, method).remote(ref)) for i, e in enumerate(self.embedders)]
        get_named(calls, timeout_s=self.timeout_s)
