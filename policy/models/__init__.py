"""The audio-LLM model layer (docs/design.md#the-model-layer): one `AudioLLM` class, adapters registered by
``model_type``.

Importing this package registers the built-in adapters; `load_audio_llm(folder)` picks one by the folder's
``config.json`` ``model_type``.
"""

from policy.models import (
    encoder_adapter_llm,  # noqa: F401  (registers the adapter)
    hf_audio_llm,  # noqa: F401  (registers the transformers audio-LLM families)
)
from policy.models.base import (
    ADAPTERS,
    AudioLLM,
    FeatureBatch,
    get_adapter,
    load_audio_llm,
    register_adapter,
    supported_model_types,
)
from policy.models.prompt import PromptTemplate, build_prompt_embeds

__all__ = [
    "ADAPTERS",
    "AudioLLM",
    "FeatureBatch",
    "PromptTemplate",
    "SUPPORTED_MODEL_TYPES",
    "build_prompt_embeds",
    "get_adapter",
    "load_audio_llm",
    "register_adapter",
    "supported_model_types",
]


def __getattr__(name: str):
    if name == "SUPPORTED_MODEL_TYPES":  # live: adapters registered after import are included
        return supported_model_types()
    raise AttributeError(f"module 'policy.models' has no attribute {name!r}")
