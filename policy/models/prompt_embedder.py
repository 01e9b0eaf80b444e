"""`PromptEmbedder`: the part of an audio-LLM that turns audio into prompt embeddings, loaded without the LLM.

An embedding worker needs the frontend (features, encoder, projector), the LLM's input embedding table (the
prompt's text is embedded with it), the tokenizer and the prompt template: for a 7 B LLM under a Whisper-large
encoder, 1.2 of the checkpoint's 8.2 B parameters. `load_prompt_embedder(folder)` reads only those tensors: an
adapter with a ``load_frontend(folder, dtype)`` method builds them itself (both built-in adapters do); for any
other adapter the whole model is loaded and everything but those parts dropped.

The LLM's modules are built on PyTorch's ``meta`` device (no memory) only to learn the embedding table's
name and shape; the tensors come from the checkpoint's safetensors (`read_tensors`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from policy.models.base import AudioLLM, AudioToPrompt, as_dtype, get_adapter, read_config
from policy.models.prompt import PromptTemplate


class PromptEmbedder(AudioToPrompt, nn.Module):
    """Frontend + input embedding table + tokenizer + template: `AudioLLM`'s audio -> prompt methods, same values."""

    def __init__(self, frontend: nn.Module, embed_tokens: nn.Embedding, tokenizer: Any, template: PromptTemplate):
        super().__init__()
        self.frontend = frontend
        self.embed_tokens = embed_tokens
        self.tokenizer = tokenizer
        self.template = template

    @classmethod
    def from_model(cls, model: AudioLLM) -> "PromptEmbedder":
        """The parts of a loaded model (the rest is dropped with ``model``)."""
        return cls(model.frontend, model.llm.get_input_embeddings(), model.tokenizer, model.template)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens


def load_prompt_embedder(
    folder: str | Path, dtype: str | torch.dtype = "float32", prompt: str | None = None
) -> PromptEmbedder:
    """The `PromptEmbedder` of the checkpoint in ``folder`` (its adapter's ``load_frontend`` when it has one);
    ``prompt`` replaces the default instruction as in `load_audio_llm`."""
    adapter = get_adapter(read_config(folder)["model_type"], where=str(Path(folder) / "config.json"))
    load_frontend = getattr(adapter, "load_frontend", None)
    if load_frontend is None:
        embedder = PromptEmbedder.from_model(adapter.load(Path(folder), as_dtype(dtype)))
    else:
        embedder = load_frontend(Path(folder), as_dtype(dtype))
    if prompt is not None:
        embedder.template = PromptTemplate.for_tokenizer(
            embedder.tokenizer, prompt, context_format=embedder.template.context_format
        )
    return embedder.eval()


# ----------------------------------------------------------------------------------------- reading parts


def read_tensors(folder: str | Path, names: Iterable[str]) -> dict[str, Tensor]:
    """The named tensors of a folder's safetensors weights (sharded or not), reading nothing else; a name the
    checkpoint lacks raises KeyError naming the folder."""
    folder = Path(folder)
    wanted = set(names)
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        weight_map = json.loads(index[0].read_text())["weight_map"]
        shards = sorted({weight_map[n] for n in wanted if n in weight_map})
    else:
        shards = sorted(p.name for p in folder.glob("*.safetensors"))
    out: dict[str, Tensor] = {}
    for shard in shards:
        with safe_open(str(folder / shard), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys() if k in wanted})
    missing = sorted(wanted - set(out))
    if missing:
        raise KeyError(f"{folder}: the checkpoint has no tensor {', '.join(missing[:5])}")
    return out


def param_name(root: nn.Module, param: Tensor) -> str:
    """The name of ``param`` in ``root`` (by identity; e.g. the input embedding table's)."""
    for name, p in root.named_parameters(remove_duplicate=False):
        if p is param:
            return name
    raise KeyError(f"{type(root).__name__} does not hold that parameter")


def materialize(module: nn.Module, tensors: dict[str, Tensor], dtype: torch.dtype, where: str) -> nn.Module:
    """``module`` (built on the meta device) with every parameter and buffer taken from ``tensors`` (its own
    names), cast to ``dtype``; a name missing or left over raises ValueError naming ``where``."""
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if missing or unexpected or left:
        raise ValueError(
            f"{where}: weights do not match the model: missing {(missing or left)[:5]}, unexpected {unexpected[:5]}"
        )
    return module


def load_embedding_table(llm_folder: str | Path, dtype: torch.dtype) -> nn.Embedding:
    """The input embedding table of the HF causal-LM folder ``llm_folder``, without the rest of the LLM."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(llm_folder, local_files_only=True, trust_remote_code=False)
    with torch.device("meta"):
        shell = transformers.AutoModelForCausalLM.from_config(config)
    table = shell.get_input_embeddings()
    name = param_name(shell, table.weight)
    weight = read_tensors(llm_folder, [name])[name]
    return materialize(table, {"weight": weight}, dtype, str(llm_folder))
