"""Config of the rollout side: the audio-embedding worker and the vLLM sampling workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from policy.config import ConfigError, in_range, one_of, validate


@dataclass(frozen=True)
class RolloutConfig:
    """Sampling (G = ``n`` hypotheses per clip), vLLM engine sizing, weight sync, embedding."""

    SECTION: ClassVar[str] = "rollout"
    n: int = 4  # G, hypotheses per clip
    temperature: float = 1.0  # the learner scores samples at it too: softmax(logits / T)
    top_p: float = 1.0
    max_new_tokens: int = 32
    kv_cache_memory_bytes: int = 64 << 20  # vLLM KV cache size (CPU and GPU)
    gpu_memory_utilization: float = 0.5  # vLLM share of GPU memory when on GPU
    num_workers: int = 1  # vLLM rollout workers (data parallel)
    gpus_per_worker: float = 0.0
    tensor_parallel_size: int = 1  # GPUs one engine shards its model over (vLLM); = gpus_per_worker when > 1
    enforce_eager: bool = True
    max_model_len: int = 512  # prompt (text + audio embeddings) + hypothesis
    sync_bucket_bytes: int = 256 << 20  # weight-sync bucket size
    weight_sync: str = "object_store"  # full fine-tuning: object_store (buckets through Ray's object store) |
    # collective (broadcast from learner rank 0 over a gloo/NCCL group of its own); LoRA moves its adapter folder
    lora_sync: str = "adapter"  # LoRA: adapter (the peft folder, served by vLLM's LoRA layers) | merged (the LoRA
    # merged into full weights, moved as full fine-tuning's are by weight_sync; the engine runs without LoRA
    # layers: vLLM 0.32's LoRA embedding layer fails on a batch that mixes prompt-embeds and token positions)
    embed_batch_size: int = 16  # clips per encoder forward in the embedding worker
    num_embedders: int = 1  # embedding workers; a step's clips are split over them (each holds the frontend and
    # the LLM's input embedding table only, not the LLM)
    gpus_per_embedder: float = 0.0  # > 0: each embedding worker runs its encoder on a GPU share
    seed: int = 0
    truncated: str = "keep"  # hypotheses cut at max_new_tokens: keep | mask (no loss on
    # them: DAPO overlong filtering) | penalty (DAPO soft penalty)
    overlong_buffer: int = 0  # penalty: ramps from 0 to -overlong_penalty over the last
    # overlong_buffer tokens before max_new_tokens; truncated: full
    overlong_penalty: float = 1.0

    def __post_init__(self) -> None:
        validate(
            self,
            {
                "n": in_range(1),
                "temperature": in_range(0, lo_open=True),
                "top_p": in_range(0, 1, lo_open=True),
                "max_new_tokens": in_range(1),
                "kv_cache_memory_bytes": in_range(1),
                "gpu_memory_utilization": in_range(0, 1, lo_open=True),
                "num_workers": in_range(1),
                "gpus_per_worker": in_range(0),
                "tensor_parallel_size": in_range(1),
                "max_model_len": in_range(2),
                "sync_bucket_bytes": in_range(1),
                "weight_sync": one_of("object_store", "collective"),
                "lora_sync": one_of("adapter", "merged"),
                "embed_batch_size": in_range(1),
                "num_embedders": in_range(1),
                "gpus_per_embedder": in_range(0),
                "seed": in_range(0),
                "truncated": one_of("keep", "mask", "penalty"),
                "overlong_buffer": in_range(0),
                "overlong_penalty": in_range(0),
            },
        )
        if self.overlong_buffer >= self.max_new_tokens:
            raise ConfigError(
                f"rollout.overlong_buffer must be < rollout.max_new_tokens ({self.max_new_tokens}), "
                f"got {self.overlong_buffer}",
                key="rollout.overlong_buffer",
            )
        if self.tensor_parallel_size > 1 and self.gpus_per_worker != self.tensor_parallel_size:
            raise ConfigError(
                f"rollout.tensor_parallel_size={self.tensor_parallel_size} shards each engine over that many GPUs: "
                f"set rollout.gpus_per_worker={self.tensor_parallel_size} (got {self.gpus_per_worker:g}; "
                "tensor parallelism needs GPUs, a CPU engine runs with 1)",
                key="rollout.tensor_parallel_size",
            )
        if self.max_new_tokens >= self.max_model_len:
            raise ConfigError(
                f"rollout.max_new_tokens must be < rollout.max_model_len ({self.max_model_len}) to leave "
                f"room for the prompt, got {self.max_new_tokens}",
                key="rollout.max_new_tokens",
            )
