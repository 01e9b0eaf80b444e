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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from torch import Tensor, nn

from policy.models.base import AudioLLM, FeatureBatch, read_config, register_adapter
from policy.models.fun_asr_features import FunAsrFeatureConfig, fun_asr_features
from policy.models.prompt import DEFAULT_INSTRUCTION, PromptTemplate

SR = 16000
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PROMPT_FILE = "funrl_prompt.json"  # our prompt template beside the HF files


# ----------------------------------------------------------------------------------------------- extractors
# Each extractor turns waveforms into a `FeatureBatch` with time on axis 1 (``feats [B, T, F]``, ``mask [B, T]``);
# `AudioFamily.hf_inputs` turns that back into the keyword arguments the HF model's forward takes.


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
            [np.asarray(w, dtype=np.float32) for w in waves], sampling_rate=SR, return_attention_mask=True,
            return_tensors="pt", **kwargs,
        )
        mask = out["attention_mask"].long()
        feats = out["input_features"].float().transpose(1, 2).contiguous()
        return FeatureBatch(feats=feats, lengths=mask.sum(-1), mask=mask)

    def to_dict(self) -> dict[str, Any]:
        return self.extractor.to_dict()


def _preprocessor_dict(folder: Path) -> dict[str, Any]:
    path = folder / "preprocessor_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _mel_extractor(folder: Path, audio_cfg: Any, cls_name: str, fixed_frames: int | None,
                   **defaults: Any) -> MelExtractor:
    """The named extractor from the folder's preprocessor_config.json, else from the encoder config."""
    values = _preprocessor_dict(Path(folder))
    values.setdefault("feature_size", audio_cfg.num_mel_bins)
    for key, value in defaults.items():
        values.setdefault(key, value)
    for key in ("feature_extractor_type", "processor_class", "n_samples", "nb_max_frames"):
        values.pop(key, None)
    if values["feature_size"] != audio_cfg.num_mel_bins:
        raise ValueError(f"{folder}/preprocessor_config.json: feature_size {values['feature_size']} != the audio "
                         f"encoder's num_mel_bins {audio_cfg.num_mel_bins}")
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


def _qwen3_asr_extractor(folder: Path, config: Any) -> MelExtractor:
    return _mel_extractor(folder, config.audio_config, "Qwen3ASRFeatureExtractor", None,
                          n_window=config.audio_config.n_window)


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
    extractor: Callable[[Path, Any], Callable[[list[np.ndarray]], FeatureBatch]]
    embed: Callable[[nn.Module, nn.Module, dict[str, Tensor]], list[Tensor]]
    mask_key: str | None  # keyword of the feature mask in the HF forward (None: the model takes no mask)
    channels_first: bool  # the HF model reads features as [B, F, T] (log-mel) instead of [B, T, F]
    audio_wrap: tuple[str, str] | None = None  # tokens the processor puts around the audio, if the vocab has them
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
                    _fun_asr_extractor, _fun_asr_embed, "input_features_mask", False),
        AudioFamily("qwen2_audio", "Qwen2AudioForConditionalGeneration", "Qwen2ForCausalLM",
                    _whisper_window_extractor, _qwen2_audio_embed, "feature_attention_mask", True,
                    ("<|audio_bos|>", "<|audio_eos|>")),
        AudioFamily("qwen3_asr", "Qwen3ASRForConditionalGeneration", "Qwen3ForCausalLM",
                    _qwen3_asr_extractor, _qwen3_asr_embed, "input_features_mask", True,
                    ("<|audio_start|>", "<|audio_end|>")),
        AudioFamily("voxtral", "VoxtralForConditionalGeneration", "LlamaForCausalLM",
                    _whisper_window_extractor, _voxtral_embed, None, True),
    )
}


def hf_inputs(family: AudioFamily, batch: FeatureBatch) -> dict[str, Tensor]:
    """The keyword arguments of the family's HF forward / get_audio_features for a `FeatureBatch`."""
    feats = batch.feats.transpose(1, 2) if family.channels_first else batch.feats
    out = {"input_features": feats}
    if family.mask_key is not None:
        mask = batch.mask if batch.mask is not None else (
            torch.arange(batch.feats.shape[1], device=batch.lengths.device)[None, :] < batch.lengths[:, None])
        out[family.mask_key] = mask.long()
    return out


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
    lm.generation_config = copy.deepcopy(hf_model.generation_config)
    return lm.eval()


# ----------------------------------------------------------------------------------------- frontend + parts


class HFAudioFrontend(nn.Module):
    """audio_tower + multi_modal_projector of an HF audio-LLM, with the family's feature extractor."""

    def __init__(self, family: AudioFamily, tower: nn.Module, projector: nn.Module,
                 extractor: Callable[[list[np.ndarray]], FeatureBatch]) -> None:
        super().__init__()
        self.family = family
        self.tower = tower
        self.projector = projector
        self.extractor = extractor

    def features(self, waves: list[np.ndarray]) -> FeatureBatch:
        """Input features exactly as the family's HF processor computes them (time on axis 1)."""
        if len(waves) == 0:
            raise ValueError("no waveforms given")
        return self.extractor(list(waves))

    def forward(self, batch: FeatureBatch) -> list[Tensor]:
        """Per clip audio embeddings ``[L_a, H]`` in the LLM's hidden size."""
        weight = next(self.tower.parameters())
        inputs = hf_inputs(self.family, batch.to(device=weight.device, dtype=weight.dtype))
        return self.family.embed(self.tower, self.projector, inputs)


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


def family_of(folder: str | Path) -> AudioFamily:
    model_type = read_config(folder)["model_type"]
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


# ------------------------------------------------------------------------------------------------- adapter


def default_template(tokenizer: Any, family: AudioFamily, instruction: str = DEFAULT_INSTRUCTION) -> PromptTemplate:
    """The tokenizer's chat-template prompt, the audio wrapped in the processor's boundary tokens when the
    tokenizer names them (``audio_bos_token`` / ``audio_eos_token``) or has the family's ones as single tokens."""
    template = PromptTemplate.for_tokenizer(tokenizer, instruction)
    bos = getattr(tokenizer, "audio_bos_token", None) or (family.audio_wrap or (None, None))[0]
    eos = getattr(tokenizer, "audio_eos_token", None) or (family.audio_wrap or (None, None))[1]
    if bos is None or eos is None:
        return template
    vocab = tokenizer.get_vocab()
    if bos not in vocab or eos not in vocab:
        return template
    return PromptTemplate(prefix=template.prefix + bos, suffix=eos + template.suffix,
                          context_format=template.context_format)


class HFAudioAdapter:
    """`AudioLLM` loader/saver of one family; the folder is the HF checkpoint itself (+ our prompt file)."""

    def __init__(self, family: AudioFamily) -> None:
        self.family = family

    def load(self, folder: Path, dtype: torch.dtype = torch.float32) -> AudioLLM:
        folder = Path(folder)
        frontend, llm = load_hf_parts(folder, dtype)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        prompt_file = folder / PROMPT_FILE
        if prompt_file.is_file():
            template = PromptTemplate.from_dict(json.loads(prompt_file.read_text()), where=str(prompt_file))
        else:
            template = default_template(tokenizer, self.family)
        return AudioLLM(frontend, llm, tokenizer, template, self.family.model_type, adapter=self,
                        config=read_config(folder))

    def save(self, model: AudioLLM, folder: Path) -> None:
        """The HF checkpoint layout (config, preprocessor config, safetensors, tokenizer) + our prompt file."""
        folder = Path(folder)
        (folder / "config.json").write_text(json.dumps(model.config, indent=2, ensure_ascii=False) + "\n")
        (folder / "preprocessor_config.json").write_text(
            json.dumps(model.frontend.extractor.to_dict(), indent=2) + "\n")
        (folder / PROMPT_FILE).write_text(json.dumps(model.template.to_dict(), indent=2, ensure_ascii=False) + "\n")
        base = model.base_llm()
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(folder)
        named = {f"frontend.{k}": v for k, v in model.frontend.state_dict().items()}
        named.update({f"llm.{k}": v for k, v in model.llm_state_dict()})
        tied = bool(base.config.tie_word_embeddings)
        weights = {k: v.detach().to("cpu").contiguous() for k, v in to_hf_names(named, self.family, tied).items()}
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        model.tokenizer.save_pretrained(folder)

    def build_tiny(self, folder: Path, seed: int = 0, extra_chars: str = "",
                   instruction: str = DEFAULT_INSTRUCTION) -> Path:
        """A random tiny checkpoint of this family with a locally built tokenizer (see `hf_audio_tiny`)."""
        from policy.models.hf_audio_tiny import build_tiny_hf_audio_llm

        return build_tiny_hf_audio_llm(folder, self.family.model_type, seed=seed, extra_chars=extra_chars,
                                       instruction=instruction)


for _family in FAMILIES.values():
    register_adapter(_family.model_type)(HFAudioAdapter(_family))
