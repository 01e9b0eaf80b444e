"""The audio-embedding worker: clips -> prompt embeddings ``[prefix | audio | suffix]``.

A plain class (Ray wrapping happens in ``funrl.cluster``, which shards a step's clips over
``rollout.num_embedders`` of them). It holds only what prompts are built from, the frontend and the LLM's input
embedding table (`policy.models.prompt_embedder`: not the LLM), and uses the model layer's one prompt-building
path, so the rollout worker and the learner see exactly the same prompt (docs/design.md#the-model-layer).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import soundfile as sf
import torch

from policy.augment import AugmentConfig, Augmenter
from policy.config import ModelConfig
from policy.messages import Clip, PromptBatch
from policy.models.audio import SAMPLE_RATE, load_audio
from policy.models.prompt import prompt_token_ids
from policy.models.prompt_embedder import load_prompt_embedder


class AudioEmbeddingWorker:
    """Loads audio (augmented for a clip's ``augment_step`` when ``augment`` is on: `policy.augment`), runs the
    frozen encoder + adapter, splices the prompt."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        max_audio_seconds: float = 30.0,
        batch_size: int = 16,
        augment: AugmentConfig | None = None,
        device: str = "cpu",
    ) -> None:
        """``device``: where the frontend runs (``cuda`` for an embedder given a GPU: ``rollout.gpus_per_embedder``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_cfg = model_cfg
        self.max_audio_seconds = max_audio_seconds
        self.batch_size = batch_size
        self.augment = Augmenter(augment)
        self.model = load_prompt_embedder(model_cfg.path, dtype=model_cfg.dtype, prompt=model_cfg.prompt).to(device)
        self.model.requires_grad_(False)

    def ready(self) -> bool:
        return True

    @torch.no_grad()
    def embed(self, clips: Sequence[Clip]) -> PromptBatch:
        """Prompt embeddings for ``clips``, in order; a bad audio file raises ValueError naming it."""
        embeds: list[torch.Tensor] = []
        for chunk in _chunks(list(clips), self.batch_size):
            waves = [self.augment(load_audio(c.audio, max_seconds=self.max_audio_seconds), c) for c in chunk]
            audio = self.model.embed_audio(self.model.audio_features(waves))
            prompts = self.model.build_prompt_embeds(audio, [c.context for c in chunk])
            embeds.extend(p.detach().to("cpu", torch.float32).contiguous() for p in prompts)
        return PromptBatch(clips=tuple(clips), prompt_embeds=tuple(embeds))

    @torch.no_grad()
    def prompt_lengths(self, clips: Sequence[Clip], limit: int) -> list[int | None]:
        """Positions each clip's prompt will take, for the clips that may exceed ``limit`` (None for the others).

        The audio part grows with the clip's length (read from the file's header, at the longest the
        augmentation's speed range makes it): a bound is the clip's prompt text plus the longest clip's audio
        positions; only clips whose bound is over ``limit`` are measured exactly, each on silence of its length."""
        samples = [_samples(c.audio) for c in clips]
        if not samples:
            return []
        aug = self.augment.cfg
        stretch = 1.0 / aug.speed[0] if aug.enabled and aug.speed_prob > 0 else 1.0
        samples = [int(math.ceil(n * stretch)) for n in samples]

        def audio_positions(n: int) -> int:
            wave = np.zeros(n, dtype=np.float32)
            return int(self.model.embed_audio(self.model.audio_features([wave]))[0].shape[0])

        longest = audio_positions(max(samples))
        out: list[int | None] = []
        for clip, n in zip(clips, samples):
            ids = prompt_token_ids(self.model.tokenizer, self.model.template, clip.context)
            text = len(ids.prefix) + len(ids.suffix)
            out.append(text + audio_positions(n) if text + longest > limit else None)
        return out

    def load_frontend_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Sync a trained encoder + adapter from the learner (names of ``model.frontend``).

        Every name and shape is checked before anything is copied, so a bad update changes nothing
        (an unknown name raises KeyError, a shape mismatch ValueError)."""
        params = dict(self.model.frontend.named_parameters())
        items = list(named_tensors)
        for name, tensor in items:
            if name not in params:
                raise KeyError(f"frontend has no parameter {name!r}")
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise ValueError(
                    f"frontend parameter {name!r} has shape {tuple(params[name].shape)}, "
                    f"the update {tuple(tensor.shape)}"
                )
        with torch.no_grad():
            for name, tensor in items:
                params[name].copy_(tensor)

    def load_input_embeddings(self, weight: torch.Tensor) -> None:
        """Sync the LLM's input embedding table ``[V, H]`` (full fine-tuning trains it; the prompts' text is
        embedded with it). A shape mismatch raises ValueError and changes nothing."""
        table = self.model.get_input_embeddings().weight
        if tuple(weight.shape) != tuple(table.shape):
            raise ValueError(f"input embedding has shape {tuple(table.shape)}, the update {tuple(weight.shape)}")
        with torch.no_grad():
            table.copy_(weight)


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _samples(path: str) -> int:
    """Samples of an audio file at the models' rate, from its header (the file was checked before training)."""
    info = sf.info(path)
    return int(math.ceil(info.frames * SAMPLE_RATE / info.samplerate))
