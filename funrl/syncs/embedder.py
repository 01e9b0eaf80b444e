"""The embedding worker's sync: whatever it builds prompts with that the learner trains. The encoder + adapter
(``model.train_encoder``) and the LLM's input embedding table (full fine-tuning: the prompts' text is embedded
with it), both gathered by learner rank 0 and sent whole (they are small beside the LLM)."""

from __future__ import annotations

from typing import Any

from policy.ray_utils import get_named


class EmbedderSync:
    name = "embedder"
    feeds_engines = False

    def __init__(self, learner: Any, embedder: Any, frontend: bool, input_table: bool, timeout_s: float | None):
        self.learner = learner
        self.embedder = embedder
        self.frontend = frontend
        self.input_table = input_table
        self.timeout_s = timeout_s

    def push(self, version: int) -> None:
        del version  # the embedding worker stamps nothing
        if self.frontend:
            weights = self.learner.frontend_weights_for_sync()
            self._get(self.embedder.load_frontend_weights.remote(weights))
        if self.input_table:
            self._get(self.embedder.load_input_embeddings.remote(self.learner.input_embeddings_for_sync()))

    def restore(self, engine: Any, index: int, version: int) -> None:
        pass  # feeds no engine

    def _get(self, ref: Any) -> None:
        get_named([("embedding worker", ref)], timeout_s=self.timeout_s)
