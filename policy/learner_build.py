"""What `Learner.setup` builds on its rank once the model is loaded: LoRA (or the frontend's trainability), the
FSDP2-sharded policy (`PolicyForward`), the reference it is kept close to, and the trainable parameters."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from policy.config import LearnerConfig
from policy.distributed import mixed_precision, shard
from policy.learner_batch import PolicyForward
from policy.models import AudioLLM


@dataclass
class ShardedPolicy:
    root: nn.Module  # PolicyForward(model[, the starting frontend as the LoRA reference's]), sharded
    ref_root: nn.Module | None  # full fine-tuning with beta > 0: a frozen, sharded copy of the starting model
    lora: bool
    has_reference: bool  # beta = 0: the KL term is off, so no reference is kept or run
    params: list[nn.Parameter]  # the trainable ones


def shard_policy(
    model: AudioLLM, cfg: LearnerConfig, train_encoder: bool, mesh, device, load_ref: Callable[[str], AudioLLM]
) -> ShardedPolicy:
    """LoRA or full fine-tuning of ``model`` (in place), sharded over ``mesh``; ``load_ref(dtype)`` loads the
    starting model again for full fine-tuning's reference. LoRA's reference is the same model with its adapters
    disabled (and, with ``train_encoder``, a frozen copy of the starting frontend)."""
    lora = cfg.finetune == "lora"
    has_reference = cfg.beta > 0
    ref_frontend = None
    if lora:
        from policy.models.lora import apply_lora

        if train_encoder and has_reference:
            ref_frontend = copy.deepcopy(model.frontend).requires_grad_(False).eval()
        apply_lora(model, cfg.lora, train_frontend=train_encoder)
        if any(p.requires_grad for p in model.llm.get_input_embeddings().parameters()):
            raise ValueError(
                "learner.lora.target_modules adapts the LLM's input embedding, which the "
                "embedding worker uses to build prompts and is not synced under LoRA: "
                "remove it from learner.lora.target_modules (or use learner.finetune=full)"
            )
    else:
        model.frontend.requires_grad_(train_encoder)
    mp = mixed_precision(cfg.dtype, device)
    # the frontend is its own FSDP unit: gathered only when it runs (train_encoder), never otherwise
    own_units = [model.frontend] + ([ref_frontend] if ref_frontend is not None else [])
    root = shard(
        PolicyForward(model, ref_frontend),
        model.decoder_layers(),
        mesh,
        mp,
        extra=own_units,
        checkpoint_layers=cfg.activation_checkpointing,
        reshard_after_forward=cfg.reshard_after_forward,
    )
    ref_root = None
    if not lora and has_reference:  # no backward through it: no checkpointing, no gathered copy
        ref = load_ref(cfg.ref_dtype).requires_grad_(False).eval()
        ref_mp = mixed_precision(cfg.dtype if cfg.ref_dtype == "float32" else "float32", device)
        ref_root = shard(PolicyForward(ref), ref.decoder_layers(), mesh, ref_mp, extra=[ref.frontend])
    params = [p for p in root.parameters() if p.requires_grad]
    return ShardedPolicy(root, ref_root, lora, has_reference, params)
