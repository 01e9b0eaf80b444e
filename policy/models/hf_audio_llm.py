"""transformers' own audio-LLM classes as `AudioLLM` adapters (DESIGN.md §5, §8).

One generic adapter for the classes that share the ``model.audio_tower`` / ``model.multi_modal_projector`` /
``model.language_model`` + ``lm_head`` layout, parameterised per family by an `AudioFamily` spec: which feature
extractor, how audio features become embeddings, the HF class and the causal-LM class of its text part.

The HF model is loaded once (``from_pretrained(folder, local_files_only=True, use_safetensors=True)``; a folder
with only .bin/.pt weights is refused; remote code never runs). Its modules are then *shared*, not copied:

* the frontend holds ``audio_tower`` and ``multi_modal_projector`` (+ the feature extractor);
* the LLM is a plain causal LM of the family's text class (e.g. ``Qwen3ForCausalLM``) whose ``model`` and
  ``lm_head`` *are* the HF model's ``language_model`` and ``lm_head`` modules. Its state dict therefore has the
  names vLLM's loader expects (``model.layers.0...``, ``lm_head.weight``) and ``save_pretrained`` writes a plain
  HF causal-LM folder.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from torch import Tensor, nn

from policy.models.fun_asr_features import FunAsrFeatureConfig, fun_asr_features

SR = 16000
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONFIG_FILES = ("config.json", "generation_config.json", "preprocessor_config.json")


# ----------------------------------------------------------------------------------------------- extractors


class FunAsrExtractor:
    """Kaldi fbank + LFR (policy.models.fun_asr_features), as transformers' FunAsrNanoFeatureExtractor."""

    def __init__(self, cfg: FunAsrFeatureConfig) -> None:
        self.cfg = cfg

    def __call__(self, waves: list[np.ndarray]) -> dict[str, Tensor]:
        feats, mask = fun_asr_features(waves, self.cfg)
        return {"input_features": torch.from_numpy(feats), "input_features_mask": torch.from_numpy(mask)}


class WhisperExtractor:
    """transformers' WhisperFeatureExtractor (no torchaudio needed).

    ``fixed_frames``: pad every clip to this many mel frames (encoders with a fixed 30 s window: Qwen2-Audio,
    Voxtral); ``None`` pads to the longest clip. Clips longer than the window are refused.
    """

    def __init__(self, extractor: Any, fixed_frames: int | None, mask_key: str) -> None:
        self.extractor = extractor
        self.fixed_frames = fixed_frames
        self.mask_key = mask_key

    def __call__(self, waves: list[np.ndarray]) -> dict[str, Tensor]:
        hop = self.extractor.hop_length
        kwargs: dict[str, Any] = {"padding": "longest"}
        if self.fixed_frames is not None:
            limit = self.fixed_frames * hop
            for i, w in enumerate(waves):
                if len(w) > limit:
                    raise ValueError(
                        f"clip {i} has {len(w)} samples ({len(w) / SR:.2f} s); this encoder reads at most "
                        f"{limit} samples ({limit / SR:.1f} s): cut the clip (e.g. max_seconds in the data config)"
                    )
            kwargs = {"padding": "max_length", "max_length": limit}
        out = self.extractor(
            [np.asarray(w, dtype=np.float32) for w in waves], sampling_rate=SR, return_attention_mask=True,
            return_tensors="pt", **kwargs,
        )
        return {"input_features": out["input_features"].float(), self.mask_key: out["attention_mask"].long()}


def _preprocessor_dict(folder: Path) -> dict[str, Any]:
    path = folder / "preprocessor_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _whisper_like(folder: Path, audio_cfg: Any, cls_name: str, **defaults: Any) -> Any:
    """Build the named extractor class from the folder's preprocessor_config.json, else from the encoder config."""
    values = _preprocessor_dict(Path(folder))
    values.setdefault("feature_size", audio_cfg.num_mel_bins)
    for key, value in defaults.items():
        values.setdefault(key, value)
    values.pop("feature_extractor_type", None)
    values.pop("processor_class", None)
    return getattr(transformers, cls_name)(**values)


def _fun_asr_extractor(folder: Path, config: Any) -> FunAsrExtractor:
    cfg = FunAsrFeatureConfig.from_folder(Path(folder))
    expected = config.audio_config.num_mel_bins * config.audio_config.num_stacked_frames
    if cfg.dim != expected:
        raise ValueError(
            f"{folder}/preprocessor_config.json gives {cfg.feature_size} mel bins x {cfg.num_frames_lfr} LFR frames "
            f"= {cfg.dim} features, but the audio encoder reads {expected}"
        )
    return FunAsrExtractor(cfg)


def _window_frames(audio_cfg: Any) -> int:
    """Mel frames of the fixed Whisper-style window: max_source_positions x conv2 stride 2."""
    return 2 * audio_cfg.max_source_positions


def _qwen2_audio_extractor(folder: Path, config: Any) -> WhisperExtractor:
    frames = _window_frames(config.audio_config)
    ext = _whisper_like(folder, config.audio_config, "WhisperFeatureExtractor", chunk_length=frames // 100)
    return WhisperExtractor(ext, fixed_frames=frames, mask_key="feature_attention_mask")


def _voxtral_extractor(folder: Path, config: Any) -> WhisperExtractor:
    frames = _window_frames(config.audio_config)
    ext = _whisper_like(folder, config.audio_config, "WhisperFeatureExtractor", chunk_length=frames // 100)
    return WhisperExtractor(ext, fixed_frames=frames, mask_key="feature_attention_mask")


def _qwen3_asr_extractor(folder: Path, config: Any) -> WhisperExtractor:
    ext = _whisper_like(folder, config.audio_config, "Qwen3ASRFeatureExtractor", n_window=config.audio_config.n_window)
    return _Qwen3AsrExtractor(ext)


class _Qwen3AsrExtractor(WhisperExtractor):
    """Qwen3ASRFeatureExtractor: log-mel padded to a multiple of 2 * n_window frames (longest clip)."""

    def __init__(self, extractor: Any) -> None:
        super().__init__(extractor, fixed_frames=None, mask_key="input_features_mask")

    def __call__(self, waves: list[np.ndarray]) -> dict[str, Tensor]:
        out = self.extractor(
            [np.asarray(w, dtype=np.float32) for w in waves], sampling_rate=SR, padding=True,
            return_attention_mask=True, return_tensors="pt",
        )
        return {"input_features": out["input_features"].float(), "input_features_mask": out["attention_mask"].long()}


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


# ------------------------------------------------------------------------------------------------ families


@dataclass(frozen=True)
class AudioFamily:
    """How one transformers audio-LLM class maps onto `AudioLLM` (DESIGN.md §8 table)."""

    model_type: str  # config.json "model_type" == adapter name
    model_class: str  # transformers class of the whole model
    lm_class: str  # transformers causal-LM class of its text part (what vLLM serves)
    extractor: Callable[[Path, Any], Callable[[list[np.ndarray]], dict[str, Tensor]]]
    embed: Callable[[nn.Module, nn.Module, dict[str, Tensor]], list[Tensor]]
    paths: dict[str, str] = field(
        default_factory=lambda: {
            "tower": "model.audio_tower", "projector": "model.multi_modal_projector",
            "lm": "model.language_model", "head": "lm_head",
        }
    )


FAMILIES: dict[str, AudioFamily] = {
    f.model_type: f
    for f in (
        AudioFamily("fun_asr_nano", "FunAsrNanoForConditionalGeneration", "Qwen3ForCausalLM",
                    _fun_asr_extractor, _fun_asr_embed),
        AudioFamily("qwen2_audio", "Qwen2AudioForConditionalGeneration", "Qwen2ForCausalLM",
                    _qwen2_audio_extractor, _qwen2_audio_embed),
        AudioFamily("qwen3_asr", "Qwen3ASRForConditionalGeneration", "Qwen3ForCausalLM",
                    _qwen3_asr_extractor, _qwen3_asr_embed),
        AudioFamily("voxtral", "VoxtralForConditionalGeneration", "LlamaForCausalLM",
                    _voxtral_extractor, _voxtral_embed),
    )
}


# ------------------------------------------------------------------------------------------------- loading


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def check_safetensors_folder(folder: Path) -> None:
    """Refuse a folder whose weights are only pickles (.bin/.pt): loading those can run arbitrary code."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{folder}: only pickle weights ({', '.join(pickles)}); FunRL loads safetensors only. Convert once "
            f"in a trusted environment (model.save_pretrained(folder, safe_serialization=True)) and retry"
        )
    raise FileNotFoundError(f"{folder}: no *.safetensors weights found")


def load_hf_model(folder: str | Path, family: AudioFamily, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The family's HF model from a local folder: safetensors only, no hub, no remote code, eval mode."""
    folder = Path(folder)
    check_safetensors_folder(folder)
    cls = getattr(transformers, family.model_class)
    model = cls.from_pretrained(
        folder, local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=dtype
    )
    return model.eval()


def causal_lm_view(hf_model: nn.Module, family: AudioFamily) -> nn.Module:
    """A plain ``<lm_class>`` whose ``model`` / ``lm_head`` ARE the HF model's text modules (shared tensors).

    Its config is the text config with ``architectures = [lm_class]`` and ``tie_word_embeddings`` set to whether
    the HF model really shares ``lm_head.weight`` with the input embeddings.
    """
    lm_body = _get(hf_model, family.paths["lm"])
    head = _get(hf_model, family.paths["head"])
    text_cfg = copy.deepcopy(hf_model.config.get_text_config())
    text_cfg.architectures = [family.lm_class]
    text_cfg.tie_word_embeddings = head.weight is lm_body.get_input_embeddings().weight
    with torch.device("meta"):
        lm = getattr(transformers, family.lm_class)(text_cfg)
    lm.model = lm_body
    lm.lm_head = head
    return lm.eval()


# ------------------------------------------------------------------------------------------- tiny checkpoints


def _tiny_text(model_type: str, vocab_size: int) -> dict[str, Any]:
    """A 2-layer text model, hidden 64, head_dim 32 (vLLM's CPU attention needs head_dim >= 32)."""
    return {
        "model_type": model_type, "vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
        "max_position_embeddings": 1024, "tie_word_embeddings": model_type != "llama", "rope_theta": 10000.0,
    }


def tiny_config(model_type: str, vocab_size: int, audio_token_id: int) -> Any:
    """A tiny random-init config of the family (tiny audio encoder; text part see `_tiny_text`)."""
    if model_type == "fun_asr_nano":
        return transformers.FunAsrNanoConfig(
            audio_config={"num_mel_bins": 80, "num_stacked_frames": 7, "hidden_size": 32, "num_attention_heads": 2,
                          "intermediate_size": 64, "num_hidden_layers": 3, "num_timestamp_prediction_layers": 1,
                          "max_position_embeddings": 1024},
            adaptor_config={"hidden_size": 64, "intermediate_size": 16, "num_hidden_layers": 1,
                            "num_attention_heads": 2, "projector_hidden_size": 64},
            text_config=_tiny_text("qwen3", vocab_size), audio_token_id=audio_token_id, tie_word_embeddings=True,
        )
    whisper_like = {"num_mel_bins": 128, "d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2,
                    "encoder_ffn_dim": 64}
    if model_type == "qwen2_audio":
        return transformers.Qwen2AudioConfig(
            audio_config={"model_type": "qwen2_audio_encoder", **whisper_like, "max_source_positions": 1500},
            text_config=_tiny_text("qwen2", vocab_size), audio_token_index=audio_token_id,
        )
    if model_type == "qwen3_asr":
        return transformers.Qwen3ASRConfig(
            audio_config={"model_type": "qwen3_asr_encoder", **whisper_like, "output_dim": 64, "n_window": 50,
                          "n_window_infer": 400, "downsample_hidden_size": 16, "max_position_embeddings": 64},
            text_config=_tiny_text("qwen3", vocab_size), audio_token_id=audio_token_id, pad_token_id=0,
            timestamp_token_id=audio_token_id,
        )
    if model_type == "voxtral":
        return transformers.VoxtralConfig(
            audio_config={"model_type": "voxtral_encoder", "num_mel_bins": 128, "hidden_size": 32,
                          "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                          "max_source_positions": 1500, "vocab_size": 8},
            text_config=_tiny_text("llama", vocab_size), audio_token_id=audio_token_id,
        )
    raise ValueError(f"no tiny config for model_type {model_type!r}; known: {sorted(FAMILIES)}")


def save_tiny_hf_model(folder: str | Path, model_type: str, vocab_size: int, audio_token_id: int,
                       seed: int = 0) -> Path:
    """Write a random tiny checkpoint of the family (safetensors + config + preprocessor_config.json)."""
    family = FAMILIES[model_type]
    folder = Path(folder)
    config = tiny_config(model_type, vocab_size, audio_token_id)
    torch.manual_seed(seed)
    model = getattr(transformers, family.model_class)(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    extractor = family.extractor(folder, config)
    inner = getattr(extractor, "extractor", None)
    if inner is not None:
        inner.save_pretrained(folder)
    else:
        (folder / "preprocessor_config.json").write_text(json.dumps(
            {"feature_extractor_type": "FunAsrNanoFeatureExtractor", **vars(extractor.cfg)}, indent=2))
    return folder


# ----------------------------------------------------------------------------------------- frontend + parts


class HFAudioFrontend(nn.Module):
    """audio_tower + multi_modal_projector of an HF audio-LLM, with the family's feature extractor."""

    def __init__(self, family: AudioFamily, tower: nn.Module, projector: nn.Module,
                 extractor: Callable[[list[np.ndarray]], dict[str, Tensor]]) -> None:
        super().__init__()
        self.family = family
        self.tower = tower
        self.projector = projector
        self.extractor = extractor

    def extract(self, waves: list[np.ndarray]) -> dict[str, Tensor]:
        """Feature tensors exactly as the family's HF processor would pass them to the model."""
        if len(waves) == 0:
            raise ValueError("no waveforms given")
        return self.extractor(list(waves))

    def forward(self, batch: dict[str, Tensor]) -> list[Tensor]:
        """Per clip audio embeddings ``[L_a, H]`` in the LLM's hidden size."""
        dtype = next(self.tower.parameters()).dtype
        device = next(self.tower.parameters()).device
        moved = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in batch.items()}
        return self.family.embed(self.tower, self.projector, moved)


HF_PREFIXES = {"tower": "frontend.tower.", "projector": "frontend.projector.", "lm": "llm.model.",
               "head": "llm.lm_head."}


def to_hf_names(named: dict[str, Tensor], family: AudioFamily, tied: bool) -> dict[str, Tensor]:
    """Our names (``frontend.tower.*``, ``llm.model.*`` ...) -> the HF checkpoint's (``model.audio_tower.*`` ...)."""
    out: dict[str, Tensor] = {}
    for name, tensor in named.items():
        for part, ours in HF_PREFIXES.items():
            if name.startswith(ours):
                if not (tied and part == "head"):
                    out[family.paths[part] + "." + name[len(ours):]] = tensor
                break
        else:
            raise KeyError(f"parameter {name!r} belongs to no part of a {family.model_type} model")
    return out


def save_hf_folder(folder: str | Path, source: str | Path, named: dict[str, Tensor], family: AudioFamily,
                   tied: bool) -> Path:
    """Write an HF checkpoint folder (config/preprocessor files copied from ``source``, weights from ``named``)."""
    folder, source = Path(folder), Path(source)
    folder.mkdir(parents=True, exist_ok=True)
    for name in CONFIG_FILES:
        if (source / name).is_file():
            (folder / name).write_bytes((source / name).read_bytes())
    weights = {k: v.detach().to("cpu").contiguous() for k, v in to_hf_names(named, family, tied).items()}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def read_model_type(folder: str | Path) -> str:
    """``model_type`` of ``<folder>/config.json``, with a clear error when the file or key is missing."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json; is {folder} a model folder?")
    try:
        return json.loads(path.read_text())["model_type"]
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{path}: cannot read 'model_type' ({err})") from None


def family_of(folder: str | Path) -> AudioFamily:
    model_type = read_model_type(folder)
    if model_type not in FAMILIES:
        raise ValueError(
            f"{Path(folder) / 'config.json'}: model_type {model_type!r} is not a supported transformers audio-LLM; "
            f"supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def load_hf_parts(folder: str | Path, dtype: torch.dtype = torch.float32) -> tuple[HFAudioFrontend, nn.Module]:
    """(frontend, causal-LM view) of the HF audio-LLM in ``folder``; both share the loaded model's tensors."""
    family = family_of(folder)
    hf_model = load_hf_model(folder, family, dtype=dtype)
    extractor = family.extractor(Path(folder), hf_model.config)
    frontend = HFAudioFrontend(family, _get(hf_model, family.paths["tower"]),
                               _get(hf_model, family.paths["projector"]), extractor)
    return frontend.eval(), causal_lm_view(hf_model, family)
