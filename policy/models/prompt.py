"""Prompt layout ``[prefix text | audio | suffix text]`` (docs/design.md#the-model-layer), one code path for every
worker.

The rollout side (audio-embedding worker -> vLLM) and the learner both call `build_prompt_embeds`, so the
GRPO ratio compares log-probs of the same prompt. Rule: the prefix and the suffix are tokenised *separately*
(``add_special_tokens=False``; special tokens written in the text, e.g. ``<|im_start|>``, are matched) and
embedded with the LLM's input embedding; the audio embeddings go between them unchanged; the completion the
model generates starts right after the suffix.

A `PromptTemplate` holds the prefix and suffix text. Either may contain the ``{context}`` slot: a clip's
context (hotwords, a contextual prompt; docs/design.md#data-manifest) is rendered with ``context_format`` into it, a
clip without context gets ``""`` there. `PromptTemplate.for_tokenizer` derives prefix/suffix from the tokenizer's
chat template when it has one (one user turn holding context, audio and instruction, then the assistant
header), else from a plain format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

CONTEXT_SLOT = "{context}"
_AUDIO_MARK = "\x00AUDIO\x00"  # placeholder split out of the rendered chat template
DEFAULT_INSTRUCTION = "Transcribe the audio."
DEFAULT_CONTEXT_FORMAT = "Context: {context}\n"


@dataclass(frozen=True)
class PromptTemplate:
    """Text before (``prefix``) and after (``suffix``) the audio; either may hold one ``{context}`` slot."""

    prefix: str
    suffix: str
    context_format: str = DEFAULT_CONTEXT_FORMAT  # how a non-empty context fills the slot

    def __post_init__(self) -> None:
        for name in ("prefix", "suffix", "context_format"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"PromptTemplate.{name} must be a string, got {type(getattr(self, name)).__name__}")
        if CONTEXT_SLOT not in self.context_format:
            raise ValueError(f"PromptTemplate.context_format {self.context_format!r} must contain {CONTEXT_SLOT!r}")
        if (self.prefix + self.suffix).count(CONTEXT_SLOT) > 1:
            raise ValueError(f"PromptTemplate: at most one {CONTEXT_SLOT!r} slot in prefix + suffix")

    def render(self, context: str | None) -> tuple[str, str]:
        """(prefix, suffix) text for one clip: the slot filled with the formatted context, or emptied."""
        filled = self.context_format.replace(CONTEXT_SLOT, context) if context else ""
        return self.prefix.replace(CONTEXT_SLOT, filled), self.suffix.replace(CONTEXT_SLOT, filled)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "prompt") -> "PromptTemplate":
        unknown = sorted(set(data) - {"prefix", "suffix", "context_format"})
        if unknown or "prefix" not in data or "suffix" not in data:
            raise ValueError(
                f"{where}: a prompt template needs 'prefix' and 'suffix' (optional 'context_format'); "
                f"got keys {sorted(data)}"
            )
        return cls(**data)

    @classmethod
    def for_tokenizer(
        cls,
        tokenizer: Any,
        instruction: str = DEFAULT_INSTRUCTION,
        system: str | None = None,
        context_format: str = DEFAULT_CONTEXT_FORMAT,
    ) -> "PromptTemplate":
        """Prefix/suffix from the tokenizer's chat template (user turn: context, audio, instruction), else plain.

        Plain format (no chat template): ``[bos]{context}`` before the audio, ``instruction + "\\n"`` after.
        """
        if getattr(tokenizer, "chat_template", None):
            messages = [] if system is None else [{"role": "system", "content": system}]
            messages.append({"role": "user", "content": CONTEXT_SLOT + _AUDIO_MARK + instruction})
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            if text.count(_AUDIO_MARK) != 1:
                raise ValueError(
                    "the tokenizer's chat template does not keep the user message verbatim; "
                    "give the model an explicit prompt template (prefix/suffix)"
                )
            prefix, suffix = text.split(_AUDIO_MARK)
            return cls(prefix=prefix, suffix=suffix, context_format=context_format)
        bos = tokenizer.bos_token or ""
        sys_text = f"{system}\n" if system else ""
        return cls(prefix=bos + sys_text + CONTEXT_SLOT, suffix=instruction + "\n", context_format=context_format)


@dataclass(frozen=True)
class PromptIds:
    """Token ids of one clip's prefix and suffix (for debugging and tests)."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]


def prompt_token_ids(tokenizer: Any, template: PromptTemplate, context: str | None) -> PromptIds:
    """Prefix and suffix token ids of one clip, each tokenised on its own without added special tokens."""
    prefix, suffix = template.render(context)

    def ids(text: str) -> tuple[int, ...]:
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()

    return PromptIds(prefix=ids(prefix), suffix=ids(suffix))


def build_prompt_embeds(
    llm: nn.Module,
    tokenizer: Any,
    template: PromptTemplate,
    audio_embeds: Sequence[Tensor],
    contexts: Sequence[str | None] | None = None,
) -> list[Tensor]:
    """Per clip ``[len(prefix) + L_a + len(suffix), H]``: embedded prefix, the audio embeddings, embedded suffix.

    ``llm`` is anything with ``get_input_embeddings()`` (a causal LM or its peft wrapper); ``contexts`` is one
    entry per clip (``None``/``""`` = no context) or ``None`` for no context at all.
    """
    contexts = [None] * len(audio_embeds) if contexts is None else list(contexts)
    if len(contexts) != len(audio_embeds):
        raise ValueError(f"build_prompt_embeds: {len(audio_embeds)} audio clips but {len(contexts)} contexts")
    embedding = llm.get_input_embeddings()
    weight = embedding.weight
    cache: dict[str | None, PromptIds] = {}
    out: list[Tensor] = []
    for audio, context in zip(audio_embeds, contexts):
        if audio.dim() != 2 or audio.shape[-1] != weight.shape[-1]:
            raise ValueError(f"audio embeddings must be [L_a, {weight.shape[-1]}], got {tuple(audio.shape)}")
        if context not in cache:
            cache[context] = prompt_token_ids(tokenizer, template, context)
        ids = cache[context]
        both = torch.tensor(ids.prefix + ids.suffix, dtype=torch.long, device=weight.device)
        text = embedding(both)
        n = len(ids.prefix)
        out.append(torch.cat([text[:n], audio.to(device=text.device, dtype=text.dtype), text[n:]], dim=0))
    return out
