"""LoRA on the LLM of an `AudioLLM` with peft (docs/design.md#fsdp2-and-lora).

* `apply_lora` wraps ``model.llm`` with peft LoRA (``target_modules`` configurable, Linear layers only); the
  LLM's base weights are frozen, the frontend is frozen unless ``train_frontend``.
* `train_adapter_only` freezes all but the audio adapter (and the LoRA matrices, when LoRA is applied with it).
* `merged_llm_state_dict` yields the LLM's weights under the plain HF names vLLM loads, each LoRA layer's
  weight as ``W + scaling * (B @ A)`` (computed in float32), without touching the training model. DTensor
  (FSDP2) parameters are gathered with ``full_tensor()``: a collective, so every rank must iterate it.
* `export_lora_adapter` writes the adapter alone as a peft folder (``adapter_config.json`` +
  ``adapter_model.safetensors``) that ``PeftModel.from_pretrained`` and vLLM's ``LoRARequest`` load.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import Tensor

from policy.models.base import AudioLLM, atomic_dir

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def _full(t: Tensor) -> Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def apply_lora(model: AudioLLM, cfg: Any, train_frontend: bool = False) -> AudioLLM:
    """Wrap ``model.llm`` with LoRA; ``cfg`` has ``r``, ``alpha``, ``dropout``, ``target_modules``.

    Returns ``model`` (changed in place). Trainable afterwards: the LoRA matrices (+ the frontend if asked).
    """
    if model.is_lora:
        raise ValueError("LoRA is already applied to this model")
    targets: Sequence[str] = tuple(cfg.target_modules)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.llm.named_modules()}
    missing = sorted(set(targets) - names)
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.llm.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"lora.target_modules {missing} are not modules of this LLM; its Linear layers: {linear}")
    peft_cfg = PeftLoraConfig(
        r=int(cfg.r),
        lora_alpha=cfg.alpha,
        lora_dropout=float(cfg.dropout),
        target_modules=list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model.llm = get_peft_model(model.llm, peft_cfg)
    model.frontend.requires_grad_(train_frontend)
    return model


def train_adapter_only(model: AudioLLM, lora: Any | None = None) -> AudioLLM:
    """Freeze every weight but the audio adapter's (``frontend.adapter``: a pretrained encoder and LLM stay as
    they are, SLAM-ASR's recipe); with ``lora`` (as `apply_lora`'s ``cfg``), LoRA is applied to the LLM first
    and its matrices train too. Returns ``model`` (changed in place)."""
    adapter = getattr(model.frontend, "adapter", None)
    if not isinstance(adapter, torch.nn.Module):
        raise ValueError(f"this {model.model_type} model has no frontend.adapter to train alone")
    if lora is not None:
        apply_lora(model, lora)
    model.requires_grad_(False)
    adapter.requires_grad_(True)
    for name, p in model.llm.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
    return model


def _merged_weight(module: LoraLayer, weight: Tensor, name: str) -> Tensor:
    if not isinstance(module, LoraLinear):
        raise TypeError(f"{name}: merging is implemented for LoRA Linear layers only, got {type(module).__name__}")
    if module.merged or module.disable_adapters:
        return weight
    out = weight.float()
    for adapter in module.active_adapters:
        if adapter not in module.lora_A:
            continue
        if module.use_dora.get(adapter, False):
            raise ValueError(f"{name}: DoRA adapters are not supported")
        a = _full(module.lora_A[adapter].weight.detach()).float()
        b = _full(module.lora_B[adapter].weight.detach()).float()
        delta = b @ a
        out = out + module.scaling[adapter] * (delta.T if module.fan_in_fan_out else delta)
    return out.to(weight.dtype)


def merged_llm_state_dict(model: AudioLLM) -> Iterator[tuple[str, Tensor]]:
    """(plain HF name, merged tensor) for every LLM state-dict entry; see module doc."""
    if not model.is_lora:
        yield from model.llm_state_dict()
        return
    base = model.base_llm()
    lora_modules = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    for key, tensor in base.state_dict(keep_vars=True).items():
        if ".lora_" in key and key.split(".lora_")[0] in lora_modules:
            continue  # lora_A / lora_B / ... of a LoRA layer
        if ".base_layer." in key:
            mod_name, _, param = key.partition(".base_layer.")
            plain = f"{mod_name}.{param}"
            value = _full(tensor.detach())
            if param == "weight":
                value = _merged_weight(lora_modules[mod_name], value, plain)
            yield plain, value
        else:
            yield key, _full(tensor.detach())


def lora_state_dict(model: AudioLLM) -> dict[str, Tensor]:
    """The LoRA matrices under peft's saved names (``base_model.model.<module>.lora_A.weight``), gathered."""
    if not model.is_lora:
        raise ValueError("this model has no LoRA adapter (apply_lora first)")
    state = get_peft_model_state_dict(model.llm, state_dict=model.llm.state_dict(keep_vars=True))
    return {k: _full(v.detach()).to("cpu").contiguous() for k, v in state.items()}


def export_lora_adapter(model: AudioLLM, folder: str | Path) -> Path:
    """Write the adapter as a peft folder (atomic): adapter_config.json + adapter_model.safetensors."""
    weights = lora_state_dict(model)
    with atomic_dir(folder) as tmp:
        save_file(weights, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        model.llm.peft_config["default"].save_pretrained(str(tmp))  # adapter_config.json
    return Path(folder)
