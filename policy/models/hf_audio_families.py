"""The transformers audio-LLM families (docs/design.md#transformers-audio-llm-classes): feature extractors
and audio -> embeddings, per class.

Each `AudioFamily` says how one transformers class maps onto `AudioLLM`: its feature extractor (returning a
`FeatureBatch` with time on axis 1), how the HF model's audio tower (+ projector) turns those features into
per-clip embeddings (mirroring the HF model's own forward, so that the embeddings equal the ones it splices
into its placeholder positions), the attribute paths of its parts and the causal-LM class of its text part.
Used by `policy.models.hf_audio_llm`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from torch import Tensor, nn

from policy.models.base import FeatureBatch
from policy.models.fun_asr_features import FunAsrFeatureConfig, fun_asr_features

SR = 16000


# ----------------------------------------------------------------------------------------------- extractors
# Each extractor turns waveforms into a `FeatureBatch` with time on axis 1 (``feats [B, T, F]``, ``mask [B, T]``);
# `hf_inputs(family, batch)` turns that back into the keyword arguments the HF model's forward takes.


class FunAsrExtractor:
    """Kaldi fbank + LFR (policy.models.fun_asr_features), as transformers' FunAsrNanoFeatureExtractor."""

    def __init__(self, cfg: FunAsrFeatureConfig) -> None:
        self.cfg = cfg

    def __call__(self, waves: list[np.ndarray]) -> FeatureBatch:
        feats, mask = fun_asr_features(waves, self.cfg)
        mask_t = torch.from_numpy(mask).long()
        return FeatureBatch(feats=torch.from_numpy(feats), lengths=mask_t.sum(-1), mask=mask_t)

    def to_dict(self) -> dict[str, Any]:
        return {"feature_extractor_type": "FunAsrNanoFeatureExtractor", **asdict(self.cfg)}


class MelExtractor:
    """A transformers log-mel extractor (WhisperFeatureExtractor, Qwen3ASRFeatureExtractor; no torchaudio).

    ``fixed_frames``: pad every clip to this many mel frames (encoders with a fixed 30 s window: Qwen2-Audio,
    Voxtral), refusing longer clips; ``None`` pads to the longest clip (the extractor may round up further).
    """

    def __init__(self, extractor: Any, fixed_frames: int | None) -> None:
        self.extractor = extractor
        self.fixed_frames = fixed_frames

    def __call__(self, waves: list[np.ndarray]) -> FeatureBatch:
        kwargs: dict[str, Any] = {"padding": "longest"}
        if self.fixed_frames is not None:
            limit = self.fixed_frames * self.extractor.hop_length
            for i, w in enumerate(waves):
                if len(w) > limit:
                    raise ValueError(
                        f"clip {i} has {len(w)} samples ({len(w) / SR:.2f} s); this encoder reads at most "
                        f"{limit} samples ({limit / SR:.1f} s): cut the clip (e.g. max_seconds in the data config)"
                    )
            kwargs = {"padding": "max_length", "max_length": limit}
        out = self.extractor(
            [np.asarray(w, dtype=np.float32) for w in waves],
            sampling_rate=SR,
            return_attention_mask=True,
            return_tensors="pt",
            **kwargs,
        )
        mask = out["attention_mask"].long()
        feats = out["input_features"].float().transpose(1, 2).contiguous()
        return FeatureBatch(feats=feats, lengths=mask.sum(-1), mask=mask)

    def to_dict(self) -> dict[str, Any]:
        return self.extractor.to_dict()


def _preprocessor_dict(folder: Path) -> dict[str, Any]:
    path = folder / "preprocessor_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _mel_extractor(
    folder: Path, audio_cfg: Any, cls_name: str, fixed_frames: int | None, **defaults: Any
) -> MelExtractor:
    """The named extractor from the folder's preprocessor_config.json, else from the encoder config."""
    values = _preprocessor_dict(Path(folder))
    values.setdefault("feature_size", audio_cfg.num_mel_bins)
    for key, value in defaults.items():
        values.setdefault(key, value)
    for key in ("feature_extractor_type", "processor_class", "n_samples", "nb_max_frames"):
        values.pop(key, None)
    if values["feature_size"] != audio_cfg.num_mel_bins:
        raise ValueError(
            f"{folder}/preprocessor_config.json: feature_size {values['feature_size']} != the audio "
            f"encoder's num_mel_bins {audio_cfg.num_mel_bins}"
        )
    return MelExtractor(getattr(transformers, cls_name)(**values), fixed_frames)


def _fun_asr_extractor(folder: Path, config: Any) -> FunAsrExtractor:
    cfg = FunAsrFeatureConfig.from_folder(Path(folder))
    expected = config.audio_config.num_mel_bins * config.audio_config.num_stacked_frames
    if cfg.dim != expected:
        raise ValueError(
            f"{folder}/preprocessor_config.json gives {cfg.feature_size} mel bins x {cfg.num_frames_lfr} LFR frames "
            f"= {cfg.dim} features, but the audio encoder reads {expected}"
        )
    return FunAsrExtractor(cfg)


def _whisper_window_extractor(folder: Path, config: Any) -> MelExtractor:
    """Qwen2-Audio / Voxtral: Whisper log-mel padded to the encoder's window, 2 x max_source_positions frames."""
    frames = 2 * config.audio_config.max_source_positions
    return _mel_extractor(folder, config.audio_config, "WhisperFeatureExtractor", frames, chunk_length=frames // 100)


def _whisper_longest_extractor(folder: Path, config: Any) -> MelExtractor:
    """Qwen2.5-Omni: Whisper log-mel, the encoder packs valid frames, so padding to the longest clip suffices."""
    return _mel_extractor(folder, config.audio_config, "WhisperFeatureExtractor", None)


def _qwen3_asr_extractor(folder: Path, config: Any) -> MelExtractor:
    return _mel_extractor(
        folder, config.audio_config, "Qwen3ASRFeatureExtractor", None, n_window=config.audio_config.n_window
    )


# ------------------------------------------------------------------------------------------- audio -> embeds


def _fun_asr_embed(tower: nn.Module, projector: nn.Module, batch: dict[str, Tensor]) -> list[Tensor]:
    """FunAsrNanoModel.get_audio_features: encoder, then projector + adaptor layers, both masked."""
    mask = batch["input_features_mask"]
    hidden = tower(input_features=batch["input_features"], input_features_mask=mask).last_hidden_state
    embeds = projector(hidden, mask)
    return [embeds[i, :n] for i, n in enumerate(mask.sum(-1).tolist())]


def _whisper_output_lengths(mel_lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Frames after conv2 (stride 2) and after the stride-2 average pool, as Qwen2AudioEncoder computes them."""
    after_conv = (mel_lengths - 1) // 2 + 1
    return after_conv, (after_conv - 2) // 2 + 1


def _qwen2_audio_embed(tower: nn.Module, projector: nn.Module, batch: dict[str, Tensor]) -> list[Tensor]:
    """Qwen2AudioModel.forward's audio branch: padded-frame attention mask, tower, projector, cut to length."""
    from transformers.masking_utils import create_bidirectional_mask

    feats = batch["input_features"]
    conv_lengths, out_lengths = _whisper_output_lengths(batch["feature_attention_mask"].sum(-1))
    conv_frames = (feats.shape[-1] - 2) // 2 + 1
    mask_2d = (torch.arange(conv_frames)[None, :] < conv_lengths[:, None]).long()
    dummy = torch.zeros(feats.shape[0], conv_frames, 1, dtype=feats.dtype)
    mask = create_bidirectional_mask(config=tower.config, inputs_embeds=dummy, attention_mask=mask_2d)
    embeds = projector(tower(feats, attention_mask=mask).last_hidden_state)
    return [embeds[i, :n] for i, n in enumerate(out_lengths.tolist())]


def _qwen3_asr_embed(tower: nn.Module, projector: nn.Module, batch: dict[str, Tensor]) -> list[Tensor]:
    """Qwen3ASRModel.get_audio_features: packed valid positions of all clips, split back per clip."""
    mask = batch["input_features_mask"]
    packed = projector(tower(input_features=batch["input_features"], input_features_mask=mask).last_hidden_state)
    chunk = 2 * tower.config.n_window
    lengths = mask.view(mask.shape[0], -1, chunk).sum(-1)
    for _ in range(3):  # three (k=3, s=2, p=1) convolutions per chunk; an empty chunk stays empty
        lengths = torch.where(lengths > 0, (lengths - 1) // 2 + 1, torch.zeros_like(lengths))
    return list(torch.split(packed, lengths.sum(-1).tolist()))


def _voxtral_embed(tower: nn.Module, projector: nn.Module, batch: dict[str, Tensor]) -> list[Tensor]:
    """VoxtralModel.get_audio_features: the whole 30 s window, 4 encoder frames stacked per embedding."""
    hidden = tower(batch["input_features"]).last_hidden_state
    embeds = projector(hidden.reshape(hidden.shape[0], -1, tower.config.intermediate_size))
    return list(embeds)


def _omni_embed(tower: nn.Module, projector: nn.Module, batch: dict[str, Tensor]) -> list[Tensor]:
    """Qwen2_5OmniThinker.get_audio_features: valid frames of all clips packed [F, sum T], the tower's own
    projection; the packed output is split back per clip."""
    mask = batch["feature_attention_mask"]
    lengths = mask.sum(-1)
    packed = batch["input_features"].permute(0, 2, 1)[mask.bool()].permute(1, 0)
    after_conv, out_lengths = _whisper_output_lengths(lengths)
    hidden = tower(packed, feature_lens=lengths, aftercnn_lens=after_conv).last_hidden_state
    return list(torch.split(projector(hidden), out_lengths.tolist()))


def _qwen2_text_config(text_cfg: Any) -> Any:
    """Qwen2.5-Omni's text config (M-RoPE) as a plain ``Qwen2Config``. For audio-only prompts every position
    id has three equal components, where M-RoPE equals ordinary RoPE: the text part IS a Qwen2 model."""
    keys = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "hidden_act",
        "max_position_embeddings",
        "rms_norm_eps",
        "attention_dropout",
        "use_sliding_window",
        "sliding_window",
        "max_window_layers",
        "initializer_range",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "dtype",
    )
    values = {k: getattr(text_cfg, k) for k in keys if getattr(text_cfg, k, None) is not None}
    theta = (getattr(text_cfg, "rope_parameters", None) or {}).get("rope_theta", 1000000.0)
    return transformers.Qwen2Config(**values, rope_parameters={"rope_type": "default", "rope_theta": theta})


# ------------------------------------------------------------------------------------------------ families


@dataclass(frozen=True)
class AudioFamily:
    """How one transformers audio-LLM class maps onto `AudioLLM` (docs/design.md#transformers-audio-llm-classes)."""

    model_type: str  # config.json "model_type" == adapter name
    model_class: str  # transformers class that is loaded (the whole audio-LLM, or its thinker)
    lm_class: str  # transformers causal-LM class of its text part (what vLLM serves)
    extractor: Callable[[Path, Any], Callable[[list[np.ndarray]], FeatureBatch]]
    embed: Callable[[nn.Module, nn.Module, dict[str, Tensor]], list[Tensor]]
    mask_key: str | None  # keyword of the feature mask in the HF forward (None: the model takes no mask)
    channels_first: bool  # the HF model reads features as [B, F, T] (log-mel) instead of [B, T, F]
    audio_wrap: tuple[str, str] | None = None  # tokens the processor puts around the audio, if the vocab has them
    paths: dict[str, str | None] = field(default_factory=lambda: dict(DEFAULT_PATHS))  # projector None: none
    sub_config: str | None = None  # load model_class with this part of the folder's config (e.g. the thinker)
    save_prefix: str = ""  # the part's key prefix in the folder's checkpoint (e.g. "thinker.")
    unused_prefixes: tuple[str, ...] = ()  # checkpoint keys FunRL does not load; `save` copies them unchanged
    text_config: Callable[[Any], Any] | None = None  # the text part's config -> the lm_class's config
    # checkpoint weight names: transformers 5 loads its modules' own names ("model.language_model.*") and, for
    # some classes, an older layout ("language_model.model.*") that the Hub checkpoints, transformers 4.x and
    # vLLM use. `legacy_names`: (module-name prefix, legacy prefix) pairs, empty when there is no older layout;
    # `hub_layout`: the layout the family's real checkpoints use ("legacy" or "transformers5")
    legacy_names: tuple[tuple[str, str], ...] = ()
    hub_layout: str = "transformers5"


DEFAULT_PATHS: dict[str, str | None] = {
    "tower": "model.audio_tower",
    "projector": "model.multi_modal_projector",
    "lm": "model.language_model",
    "head": "lm_head",
}
# Qwen2-Audio and Voxtral checkpoints (written by transformers 4.x; vLLM's Qwen2AudioForConditionalGeneration
# has no mapping from the transformers 5 names); transformers 5 maps them back (conversion_mapping "qwen2_audio")
LEGACY_AUDIO_NAMES = (
    ("model.audio_tower.", "audio_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)
LAYOUTS = ("legacy", "transformers5")


_OMNI_THINKER = AudioFamily(  # a Qwen2.5-Omni thinker saved on its own
    "qwen2_5_omni_thinker",
    "Qwen2_5OmniThinkerForConditionalGeneration",
    "Qwen2ForCausalLM",
    _whisper_longest_extractor,
    _omni_embed,
    "feature_attention_mask",
    True,
    ("<|audio_bos|>", "<|audio_eos|>"),
    paths={"tower": "audio_tower", "projector": None, "lm": "model", "head": "lm_head"},
    text_config=_qwen2_text_config,
    unused_prefixes=("visual.",),
)

FAMILIES: dict[str, AudioFamily] = {
    f.model_type: f
    for f in (
        AudioFamily(
            "fun_asr_nano",
            "FunAsrNanoForConditionalGeneration",
            "Qwen3ForCausalLM",
            _fun_asr_extractor,
            _fun_asr_embed,
            "input_features_mask",
            False,
        ),
        AudioFamily(
            "qwen2_audio",
            "Qwen2AudioForConditionalGeneration",
            "Qwen2ForCausalLM",
            _whisper_window_extractor,
            _qwen2_audio_embed,
            "feature_attention_mask",
            True,
            ("<|audio_bos|>", "<|audio_eos|>"),
            legacy_names=LEGACY_AUDIO_NAMES,
            hub_layout="legacy",
        ),
        AudioFamily(
            "qwen3_asr",
            "Qwen3ASRForConditionalGeneration",
            "Qwen3ForCausalLM",
            _qwen3_asr_extractor,
            _qwen3_asr_embed,
            "input_features_mask",
            True,
            ("<|audio_start|>", "<|audio_end|>"),
        ),
        AudioFamily(
            "voxtral",
            "VoxtralForConditionalGeneration",
            "LlamaForCausalLM",
            _whisper_window_extractor,
            _voxtral_embed,
            None,
            True,
            legacy_names=LEGACY_AUDIO_NAMES,
            hub_layout="legacy",
        ),
        _OMNI_THINKER,
        # the full Qwen2.5-Omni checkpoint: only its thinker is loaded (keys "thinker.*"; talker/token2wav and
        # the pickled spk_dict.pt of the speech-output half are not read)
        replace(
            _OMNI_THINKER,
            model_type="qwen2_5_omni",
            sub_config="thinker_config",
            save_prefix="thinker.",
            unused_prefixes=("thinker.visual.", "talker.", "token2wav."),
        ),
    )
}


def hf_inputs(family: AudioFamily, batch: FeatureBatch) -> dict[str, Tensor]:
    """The keyword arguments of the family's HF forward / get_audio_features for a `FeatureBatch`."""
    feats = batch.feats.transpose(1, 2) if family.channels_first else batch.feats
    out = {"input_features": feats}
    if family.mask_key is not None:
        mask = (
            batch.mask
            if batch.mask is not None
            else (torch.arange(batch.feats.shape[1], device=batch.lengths.device)[None, :] < batch.lengths[:, None])
        )
        out[family.mask_key] = mask.long()
    return out
