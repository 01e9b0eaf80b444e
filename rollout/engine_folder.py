"""The folder a vLLM rollout engine starts from: the checkpoint's LLM as a plain transformers causal-LM folder.

Written once per run, before the engines start, by the driver (`funrl.cluster`, `funrl.eval`): the one moment the
whole audio-LLM is loaded outside the learner ranks (on the CPU; freed when written). The embedding workers never
load the LLM (`policy.models.prompt_embedder`).
"""

from __future__ import annotations

from policy.config import ModelConfig
from policy.models import load_audio_llm


def export_engine_llm(model_cfg: ModelConfig, folder: str) -> str:
    """Write the LLM of ``model_cfg.path`` (LoRA merged) with its tokenizer into ``folder`` for vLLM, embeddings
    untied so that a weight sync reaches the output layer (`AudioLLM.export_llm`); returns ``folder``."""
    model = load_audio_llm(model_cfg.path, dtype=model_cfg.dtype, prompt=model_cfg.prompt)
    return str(model.export_llm(folder, untie_embeddings=True))
