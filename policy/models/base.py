"""`AudioLLM`: the one model class every worker uses (docs/design.md#the-model-layer), plus the adapter registry.

An `AudioLLM` is built by composition from

* ``frontend`` — an adapter-specific ``nn.Module`` (feature extraction + audio encoder + projector) with
  ``features(waves) -> FeatureBatch`` and ``forward(FeatureBatch) -> list[Tensor]`` (per clip ``[L_a, H]``);
* ``llm`` — a transformers causal LM (``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``, ``LlamaForCausalLM`` ...),
  possibly wrapped by peft (`policy.models.lora.apply_lora`);
* ``tokenizer`` — the LLM's ``PreTrainedTokenizerFast``; ``template`` — its `PromptTemplate`;
* ``adapter`` — the registered loader that built it (knows how to ``save`` this kind of model).

Adapters register a loader object under one or more ``config.json`` ``model_type`` names::

    @register_adapter("my_type")
    class MyAdapter:
        def load(self, folder: Path, dtype: torch.dtype) -> AudioLLM: ...
        def build_tiny(self, folder: Path, **kw) -> Path: ...       # random tiny checkpoint for tests
        def save(self, model: AudioLLM, folder: Path) -> None: ...   # into an empty folder
        def load_frontend(self, folder: Path, dtype: torch.dtype) -> PromptEmbedder: ...  # optional: the
            # embedding workers' part only (`policy.models.prompt_embedder`); without it they load the whole model

`load_audio_llm(folder)` reads the folder's ``model_type`` and dispatches.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from policy.files import created_mode, replace_dir
from policy.models.packing import packed_logprobs, token_logprobs
from policy.models.prompt import PromptTemplate, build_prompt_embeds

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class FeatureBatch:
    """A padded batch of input features, as a frontend's encoder reads them."""

    feats: Tensor  # [B, T_f, F] (zeros after each clip's length)
    lengths: Tensor  # [B] long: valid frames per clip
    mask: Tensor | None = None  # optional [B, T_f] (1 = valid) for encoders that want one

    def __post_init__(self) -> None:
        if self.lengths.dim() != 1 or self.lengths.shape[0] != self.feats.shape[0]:
            raise ValueError(
                f"FeatureBatch: lengths {tuple(self.lengths.shape)} do not match feats "
                f"{tuple(self.feats.shape)} (one length per clip)"
            )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "FeatureBatch":
        """Features moved/cast (``dtype`` applies to float tensors only)."""

        def move(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else t.dtype)

        return FeatureBatch(move(self.feats), self.lengths.to(device), move(self.mask))


class AdapterLoader(Protocol):
    """What `register_adapter` expects of an adapter object."""

    def load(self, folder: Path, dtype: torch.dtype) -> "AudioLLM": ...
    @property
    def build_tiny(self) -> Callable[..., Path]: ...  # (folder, **adapter-specific options) -> folder
    def save(self, model: "AudioLLM", folder: Path) -> None: ...


ADAPTERS: dict[str, AdapterLoader] = {}


def register_adapter(*names: str) -> Callable[[Any], Any]:
    """Class decorator: register one instance of the class under each ``model_type`` name (duplicates raise)."""
    if not names:
        raise ValueError("register_adapter needs at least one model_type name")

    def deco(cls: Any) -> Any:
        loader = cls() if isinstance(cls, type) else cls
        for name in names:
            if name in ADAPTERS:
                raise ValueError(f"adapter {name!r} is already registered ({type(ADAPTERS[name]).__name__})")
            ADAPTERS[name] = loader
        return cls

    return deco


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(ADAPTERS))


def get_adapter(model_type: str, where: str = "") -> AdapterLoader:
    if model_type not in ADAPTERS:
        raise ValueError(
            f"{where + ': ' if where else ''}unknown model_type {model_type!r}; supported: "
            f"{', '.join(supported_model_types())}"
        )
    return ADAPTERS[model_type]


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def read_config(folder: str | Path) -> dict[str, Any]:
    """``<folder>/config.json`` as a dict, with errors that name the folder/file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist (model.path in the config)")
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a model folder needs a config.json with a 'model_type'")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{path}: no 'model_type' key; supported: {', '.join(supported_model_types())}")
    return config


def load_tokenizer(folder: str | Path) -> Any:
    """The tokenizer saved in ``folder`` (local files only, no remote code); a folder without one is an error.

    transformers builds a tokenizer with only the special tokens, silently, when the folder has a tokenizer
    config but no vocabulary (or nothing at all); it encodes every text to nothing.
    """
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    if not tokenizer("a", add_special_tokens=False)["input_ids"]:
        raise FileNotFoundError(
            f"{folder}: no tokenizer vocabulary (tokenizer.json, or vocab.json + merges.txt, or "
            f"tokenizer.model); the tokenizer loaded from it encodes every text to nothing"
        )
    return tokenizer


def load_audio_llm(folder: str | Path, dtype: str | torch.dtype = "float32", prompt: str | None = None) -> "AudioLLM":
    """Load the checkpoint in ``folder`` with the adapter its ``config.json`` ``model_type`` names.

    ``prompt``: an instruction that replaces the model's default prompt (rebuilt with its chat template).
    """
    config = read_config(folder)
    adapter = get_adapter(config["model_type"], where=str(Path(folder) / "config.json"))
    model = adapter.load(Path(folder), as_dtype(dtype))
    if prompt is not None:
        model.template = PromptTemplate.for_tokenizer(
            model.tokenizer, prompt, context_format=model.template.context_format
        )
    return model


def _full(t: Tensor) -> Tensor:
    """A plain tensor (DTensor shards gathered: a collective, every rank must call)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class AudioToPrompt:
    """audio -> prompt embeddings, for a module with ``frontend``, ``tokenizer``, ``template`` and
    ``get_input_embeddings()`` (`AudioLLM`, and `policy.models.prompt_embedder.PromptEmbedder` without the LLM)."""

    frontend: Any
    tokenizer: Any
    template: PromptTemplate

    def get_input_embeddings(self) -> nn.Module:
        raise NotImplementedError

    def audio_features(self, waves: Sequence[np.ndarray]) -> FeatureBatch:
        """The frontend's input features of 16 kHz mono float32 waveforms."""
        return self.frontend.features(list(waves))

    def embed_audio(self, feats: FeatureBatch) -> list[Tensor]:
        """Per clip audio embeddings ``[L_a, H]`` in the LLM's hidden size."""
        return self.frontend(feats)

    def build_prompt_embeds(
        self, audio_embeds: Sequence[Tensor], contexts: Sequence[str | None] | None = None
    ) -> list[Tensor]:
        """Per clip ``[prefix | audio | suffix]`` embeddings ``[L, H]`` (`policy.models.prompt`)."""
        return build_prompt_embeds(self, self.tokenizer, self.template, audio_embeds, contexts)


class AudioLLM(AudioToPrompt, nn.Module):
    """Frontend (features, encoder, projector) + causal LM + tokenizer + prompt template."""

    def __init__(
        self,
        frontend: nn.Module,
        llm: nn.Module,
        tokenizer: Any,
        template: PromptTemplate,
        model_type: str,
        adapter: AdapterLoader | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.frontend = frontend
        self.llm = llm
        self.tokenizer = tokenizer
        self.template = template
        self.model_type = model_type
        self.adapter = adapter
        self.config = dict(config or {})

    # ------------------------------------------------------------------------------------------- parts
    @property
    def is_lora(self) -> bool:
        return hasattr(self.llm, "peft_config")

    def base_llm(self) -> nn.Module:
        """The transformers causal LM itself (inside the peft wrapper when LoRA is applied)."""
        return self.llm.get_base_model() if self.is_lora else self.llm

    def decoder_layers(self) -> list[nn.Module]:
        """The LLM's decoder layers (FSDP2 shards each one)."""
        return list(self.base_llm().model.layers)

    @property
    def eos_token_ids(self) -> list[int]:
        """Token ids that end a completion: the generation config's eos ids and the tokenizer's eos."""
        ids: list[int] = []
        gen = getattr(self.base_llm(), "generation_config", None)
        for source in (getattr(gen, "eos_token_id", None), self.tokenizer.eos_token_id):
            for i in [source] if isinstance(source, int) else (source or []):
                if i not in ids:
                    ids.append(int(i))
        return ids

    def get_input_embeddings(self) -> nn.Module:
        """The LLM's input embedding table (the prompts' text is embedded with it)."""
        return self.llm.get_input_embeddings()

    # ---------------------------------------------------------------------------------------- log-probs
    def sequence_logprobs(
        self,
        prompt_embeds: Sequence[Tensor],
        completion_ids: Tensor,
        completion_mask: Tensor | None = None,
        prompt_index: Sequence[int] | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """``[N, T]`` log-probs of ``completion_ids`` (right-padded) after each prompt; 0 where the mask is 0.

        ``prompt_index``: ``prompt_embeds`` are the distinct prompts and row i follows
        ``prompt_embeds[prompt_index[i]]``; each prompt then runs once for all its rows
        (`policy.models.packing`, same values). Without it, row i follows ``prompt_embeds[i]``.
        ``temperature``: log-probs of ``softmax(logits / temperature)``, the distribution sampled at that
        temperature (what the learner scores rollouts with).

        The N sequences ``prompt_i ++ embed(completion_i[:-1])`` are left-padded to one length with an
        attention mask and position ids counting from 0 at each sequence's first real position, so every
        value equals the unpadded per-sequence computation; logits are computed for the last T positions
        only and log-softmaxed in float32.
        """
        n, t = completion_ids.shape
        if prompt_index is None and len(prompt_embeds) != n:
            raise ValueError(f"sequence_logprobs: {len(prompt_embeds)} prompts but {n} completion rows")
        if completion_mask is None:
            completion_mask = torch.ones_like(completion_ids, dtype=torch.float32)
        if t == 0:
            return torch.zeros(n, 0, device=completion_ids.device)
        if prompt_index is not None:
            return packed_logprobs(self.llm, prompt_embeds, prompt_index, completion_ids, completion_mask, temperature)
        embedding = self.llm.get_input_embeddings()
        device, dtype = embedding.weight.device, embedding.weight.dtype
        ids = completion_ids.to(device)
        text = embedding(ids[:, :-1])  # [n, t - 1, H]
        lengths = [int(p.shape[0]) + t - 1 for p in prompt_embeds]
        width = max(lengths)
        inputs = torch.zeros(n, width, embedding.weight.shape[-1], device=device, dtype=dtype)
        attn = torch.zeros(n, width, dtype=torch.long, device=device)
        for i, p in enumerate(prompt_embeds):
            pad = width - lengths[i]
            parts = [p.to(device=device, dtype=dtype), text[i]]  # text[i] may be empty: still in the graph
            inputs[i, pad:] = torch.cat(parts, dim=0)
            attn[i, pad:] = 1
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        out = self.llm(
            inputs_embeds=inputs, attention_mask=attn, position_ids=positions, logits_to_keep=t, use_cache=False
        )
        return token_logprobs(out.logits[:, -t:], ids, completion_mask.to(device), temperature)

    def forward(
        self,
        prompt_embeds: Sequence[Tensor],
        completion_ids: Tensor,
        completion_mask: Tensor | None = None,
        prompt_index: Sequence[int] | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """= `sequence_logprobs` (so FSDP2's root pre/post-forward hooks run)."""
        return self.sequence_logprobs(prompt_embeds, completion_ids, completion_mask, prompt_index, temperature)

    # ------------------------------------------------------------------------------------------ weights
    def llm_state_dict(self) -> Iterator[tuple[str, Tensor]]:
        """(name, tensor) of the LLM under HF checkpoint names (``model.layers.0.self_attn.q_proj.weight``,
        ``lm_head.weight``: what vLLM's model class loads); LoRA weights merged, the training model untouched.

        Tensors are detached plain tensors (DTensor shards are gathered: every FSDP rank must iterate).
        """
        if self.is_lora:
            from policy.models.lora import merged_llm_state_dict

            yield from merged_llm_state_dict(self)
            return
        for name, tensor in self.llm.state_dict(keep_vars=True).items():
            yield name, _full(tensor.detach())

    def export_llm(self, folder: str | Path, untie_embeddings: bool = False) -> Path:
        """Write the LLM (merged) + tokenizer as a plain HF causal-LM folder that vLLM loads as it is.

        ``untie_embeddings=True`` writes a model with tied input/output embeddings as an untied one
        (``lm_head.weight`` stored, ``tie_word_embeddings: false``; same outputs). Rollout engines need
        this: vLLM's in-place weight reload never refreshes a tied head (it keeps a processed copy), so
        a synced ``embed_tokens`` would leave the output layer stale.
        """
        return write_causal_lm(folder, self.base_llm(), self.llm_state_dict(), self.tokenizer, untie_embeddings)

    def save(self, folder: str | Path) -> Path:
        """Save the whole model with its adapter's layout; atomic (temp dir beside it, then rename)."""
        if self.adapter is None:
            raise ValueError(f"this {self.model_type} model has no adapter to save it with")
        with atomic_dir(folder) as tmp:
            self.adapter.save(self, tmp)
        return Path(folder)


@contextlib.contextmanager
def atomic_dir(folder: str | Path) -> Iterator[Path]:
    """Yield an empty temp dir beside ``folder``; on success it replaces ``folder``, on error it is removed."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    os.chmod(tmp, created_mode(0o777))  # mkdtemp makes it 0700
    try:
        yield tmp
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_causal_lm(
    folder: str | Path,
    base: Any,
    weights: Iterable[tuple[str, Tensor]],
    tokenizer: Any,
    untie_embeddings: bool = False,
) -> Path:
    """Write ``weights`` (HF names) with ``base``'s config and generation config and ``tokenizer`` as a plain HF
    causal-LM folder that vLLM loads as it is (`AudioLLM.export_llm` says what ``untie_embeddings`` is for)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(base.config)
    config.architectures = [type(base).__name__]  # vLLM picks its model class by this
    tied = bool(getattr(base.config.get_text_config(), "tie_word_embeddings", False))
    if untie_embeddings and tied:
        config.tie_word_embeddings = False
        config.get_text_config().tie_word_embeddings = False
        tied = False
    config.save_pretrained(folder)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(folder)
    kept = {k: v.to("cpu").contiguous().clone() for k, v in weights if not (tied and k == "lm_head.weight")}
    save_file(kept, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)
    return folder
