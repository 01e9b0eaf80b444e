"""FunRL reward library: text normalisation, the built-in ASR rewards, the registry and the CLI.

    from rewards import register, REGISTRY, score_batch
    score_batch(hyps, refs, metas, weights={"wer": 1.0, "keyword": 0.5})

Built-in rewards (docs/design.md#rewards): ``wer``, ``keyword``, ``hallucination``, ``language``.
This package imports nothing else of FunRL and no torch.
"""

from rewards import builtin as _builtin  # noqa: F401  (registers wer, keyword, hallucination)
from rewards import language as _language  # noqa: F401  (registers language)
from rewards.registry import (
    REGISTRY,
    NonFiniteRewardError,
    RewardError,
    load_plugin,
    register,
    resolve_weights,
    score_batch,
)
from rewards.text import normalize, tokenize

__all__ = [
    "REGISTRY",
    "NonFiniteRewardError",
    "RewardError",
    "load_plugin",
    "register",
    "resolve_weights",
    "score_batch",
    "normalize",
    "tokenize",
]
