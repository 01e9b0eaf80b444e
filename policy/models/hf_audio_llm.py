"""transformers' own audio-LLM classes as `AudioLLM` adapters (docs/design.md#the-model-layer).

One generic adapter for the classes that share the ``audio_tower`` / ``multi_modal_projector`` /
``language_model`` + ``lm_head`` layout, parameterised per family by an `AudioFamily` spec
(`policy.models.hf_audio_families`): which feature extractor, how audio features become embeddings, the
attribute paths, the HF class and the causal-LM class of its text part. Registered ``model_type`` names:
``fun_asr_nano``, ``qwen2_audio``, ``qwen3_asr``, ``voxtral``, ``qwen2_5_omni_thinker`` and ``qwen2_5_omni``
(the thinker of a full Qwen2.5-Omni checkpoint).

The HF model is loaded once (``from_pretrained(folder, local_files_only=True, use_safetensors=True)``; a folder
with only .bin/.pt weights is refused; remote code never runs). Its modules are then *shared*, not copied:

* the frontend holds ``audio_tower`` and ``multi_modal_projector`` (+ the feature extractor);
* the LLM is a plain causal LM of the family's text class (e.g. ``Qwen3ForCausalLM``) whose ``model`` and
  ``lm_head`` *are* the HF model's ``language_model`` and ``lm_head`` modules. Its state dict therefore has the
  names vLLM's loader expects (``model.layers.0...``, ``lm_head.weight``) and ``save_pretrained`` writes a plain
  HF causal-LM folder.

``save`` names the weights as the folder the model came from does (`checkpoint_layout`): Qwen2-Audio and Voxtral
checkpoints on the Hub (and transformers 4.x, and vLLM's Qwen2-Audio loader) use ``audio_tower.*``,
``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.*``, where transformers 5's
modules are ``model.audio_tower.*`` ... ``lm_head.*``; transformers 5 loads both (`AudioFamily.legacy_names`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from policy.models.base import AudioLLM, FeatureBatch, load_tokenizer, read_config, register_adapter
from policy.models.hf_audio_families import FAMILIES, LAYOUTS, AudioFamily, hf_inputs
from policy.models.prompt import DEFAULT_INSTRUCTION, PromptTemplate
from policy.models.prompt_embedder import PromptEmbedder, materialize, param_name, read_tensors

__all__ = [
    "FAMILIES",
    "AudioFamily",
    "HFAudioAdapter",
    "HFAudioFrontend",
    "causal_lm_view",
    "checkpoint_keys",
    "checkpoint_layout",
    "checkpoint_name",
    "default_template",
    "family_of",
    "load_hf_model",
    "load_hf_parts",
    "to_hf_names",
]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PROMPT_FILE = "funrl_prompt.json"  # our prompt template beside the HF files


# ------------------------------------------------------------------------------------------------- loading


def _get(module: nn.Module, path: str | None) -> nn.Module:
    if path is None:
        raise ValueError("this audio-LLM family has no module at that part (its path is None)")
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
    kwargs: dict[str, Any] = {}
    if family.sub_config is not None:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        kwargs["config"] = getattr(config, family.sub_config)
    model = cls.from_pretrained(
        folder, local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=dtype, **kwargs
    )
    return model.eval()


def causal_lm_view(hf_model: nn.Module, family: AudioFamily) -> nn.Module:
    """A plain ``<lm_class>`` whose ``model`` / ``lm_head`` ARE the HF model's text modules (shared tensors).

    Its config is the text config with ``architectures = [lm_class]`` and ``tie_word_embeddings`` set to whether
    the HF model really shares ``lm_head.weight`` with the input embeddings.
    """
    lm_body = _get(hf_model, family.paths["lm"])
    head = _get(hf_model, family.paths["head"])
    text_cfg = copy.deepcopy(lm_body.config)
    if family.text_config is not None:
        text_cfg = family.text_config(text_cfg)
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

    def __init__(
        self,
        family: AudioFamily,
        tower: nn.Module,
        projector: nn.Module,
        extractor: Callable[[list[np.ndarray]], FeatureBatch],
        source: str | None = None,
    ) -> None:
        super().__init__()
        self.family = family
        self.tower = tower
        self.projector = projector  # nn.Identity() for towers that project themselves (Qwen2.5-Omni)
        self.extractor = extractor
        self.source = source  # the folder it was loaded from: `HFAudioAdapter.save` copies unused parts from it

    def features(self, waves: list[np.ndarray]) -> FeatureBatch:
        """Input features exactly as the family's HF processor computes them (time on axis 1)."""
        if len(waves) == 0:
            raise ValueError("no waveforms given")
        return self.extractor(list(waves))

    def forward(self, batch: FeatureBatch) -> list[Tensor]:
        """Per clip audio embeddings ``[L_a, H]`` in the LLM's hidden size (copies, not views: see
        `EncoderAdapterFrontend.forward`)."""
        weight = next(self.tower.parameters())
        inputs = hf_inputs(self.family, batch.to(device=weight.device, dtype=weight.dtype))
        return [e.clone() if e._is_view() else e for e in self.family.embed(self.tower, self.projector, inputs)]


HF_PREFIXES = {
    "tower": "frontend.tower.",
    "projector": "frontend.projector.",
    "lm": "llm.model.",
    "head": "llm.lm_head.",
}


def to_hf_names(
    named: dict[str, Tensor], family: AudioFamily, tied: bool, layout: str | None = None
) -> dict[str, Tensor]:
    """Our names (``frontend.tower.*``, ``llm.model.*`` ...) -> the checkpoint's, in ``layout`` (default: the
    family's hub layout): ``"transformers5"`` gives transformers 5's module names (``model.audio_tower.*``,
    ``model.language_model.*``, ``lm_head.*``), ``"legacy"`` the older ones of `AudioFamily.legacy_names`
    (``audio_tower.*``, ``language_model.model.*``, ``language_model.lm_head.*``). A tied head is left out."""
    out: dict[str, Tensor] = {}
    for name, tensor in named.items():
        part = next((p for p, ours in HF_PREFIXES.items() if name.startswith(ours)), None)
        if part is None:
            raise KeyError(f"parameter {name!r} belongs to no part of a {family.model_type} model")
        if not (tied and part == "head"):
            out[checkpoint_name(f"{family.paths[part]}." + name[len(HF_PREFIXES[part]) :], family, layout)] = tensor
    return out


def checkpoint_name(name: str, family: AudioFamily, layout: str | None = None) -> str:
    """A name of the family's HF model (``model.language_model.norm.weight``) -> its checkpoint key in
    ``layout`` (default: the family's hub layout; see `to_hf_names`), ``save_prefix`` included."""
    layout = layout or family.hub_layout
    if layout not in LAYOUTS or (layout == "legacy" and not family.legacy_names):
        raise ValueError(
            f"{family.model_type}: no weight-name layout {layout!r}; it has "
            f"{'legacy, transformers5' if family.legacy_names else 'transformers5'}"
        )
    renames = family.legacy_names if layout == "legacy" else ()
    old, new = next(((o, n) for o, n in renames if name.startswith(o)), ("", ""))
    return family.save_prefix + new + name[len(old) :]


def checkpoint_keys(folder: str | Path) -> list[str]:
    """Tensor names of a folder's safetensors weights (the index's weight map, else the files' headers)."""
    folder = Path(folder)
    for index in sorted(folder.glob("*.safetensors.index.json")):
        return sorted(json.loads(index.read_text())["weight_map"])
    keys: list[str] = []
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            keys.extend(f.keys())
    return sorted(keys)


def checkpoint_layout(folder: str | Path, family: AudioFamily) -> str:
    """The weight-name layout of the checkpoint in ``folder`` (see `to_hf_names`): the one most of its keys
    start with; the family's hub layout when none do (or the family has a single layout)."""
    if not family.legacy_names:
        return "transformers5"
    keys = checkpoint_keys(folder)
    legacy = sum(k.startswith(tuple(family.save_prefix + n for _, n in family.legacy_names)) for k in keys)
    current = sum(k.startswith(tuple(family.save_prefix + o for o, _ in family.legacy_names)) for k in keys)
    if legacy == current == 0:
        return family.hub_layout
    return "legacy" if legacy >= current else "transformers5"


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
    projector = nn.Identity() if family.paths["projector"] is None else _get(hf_model, family.paths["projector"])
    frontend = HFAudioFrontend(family, _get(hf_model, family.paths["tower"]), projector, extractor, str(folder))
    return frontend.eval(), causal_lm_view(hf_model, family)


def load_hf_frontend(folder: str | Path, dtype: torch.dtype = torch.float32) -> tuple[HFAudioFrontend, nn.Module]:
    """(frontend, the LLM's input embedding table) of the HF audio-LLM in ``folder``, without loading the LLM.

    The model is built on the meta device (no memory) to find the parts; the audio tower is built for real
    (its non-persistent buffers, e.g. sinusoid position tables, are computed at construction, as
    ``from_pretrained`` does) and filled from the checkpoint, the projector and the table are read from it."""
    folder = Path(folder)
    family = family_of(folder)
    check_safetensors_folder(folder)
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    if family.sub_config is not None:
        config = getattr(config, family.sub_config)
    with torch.device("meta"):
        shell = getattr(transformers, family.model_class)._from_config(config)
    layout = checkpoint_layout(folder, family)

    def weights(path: str, names: Iterable[str]) -> dict[str, Tensor]:
        keys = {n: checkpoint_name(f"{path}.{n}", family, layout) for n in names}
        found = read_tensors(folder, keys.values())
        return {n: found[k] for n, k in keys.items()}

    tower_path = str(family.paths["tower"])
    meta_tower = _get(shell, tower_path)
    tower = type(meta_tower)._from_config(meta_tower.config, dtype=dtype)
    tower.load_state_dict(weights(tower_path, tower.state_dict()), strict=True)
    projector: nn.Module = nn.Identity()
    if family.paths["projector"] is not None:
        meta_proj = _get(shell, family.paths["projector"])
        projector = materialize(
            meta_proj, weights(family.paths["projector"], meta_proj.state_dict()), dtype, str(folder)
        )
    lm_path = str(family.paths["lm"])
    table = _get(shell, lm_path).get_input_embeddings()
    name = param_name(_get(shell, lm_path), table.weight)
    table = materialize(table, {"weight": weights(lm_path, [name])[name]}, dtype, str(folder))
    frontend = HFAudioFrontend(family, tower, projector, family.extractor(folder, shell.config), str(folder))
    return frontend.eval(), table


# ------------------------------------------------------------------------------------------------- adapter


def _copy_other_files(source: Path, folder: Path) -> None:
    """Files of the source checkpoint other than its weights (written by `HFAudioAdapter.save` itself)."""
    for path in source.iterdir():
        stale_weights = path.name.endswith((".safetensors", ".index.json")) or path.name.startswith("pytorch_model")
        if path.is_file() and not stale_weights:
            (folder / path.name).write_bytes(path.read_bytes())


def _unused_source_tensors(source: Path, prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """Tensors of the source checkpoint under ``prefixes`` (parts FunRL does not load), unchanged."""
    out: dict[str, Tensor] = {}
    if not prefixes:
        return out
    for shard in sorted(source.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            out.update({key: f.get_tensor(key) for key in f.keys() if key.startswith(prefixes)})
    return out


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
    return PromptTemplate(
        prefix=template.prefix + bos, suffix=eos + template.suffix, context_format=template.context_format
    )


class HFAudioAdapter:
    """`AudioLLM` loader/saver of one family; the folder is the HF checkpoint itself (+ our prompt file)."""

    def __init__(self, family: AudioFamily) -> None:
        self.family = family

    def load(self, folder: Path, dtype: torch.dtype = torch.float32) -> AudioLLM:
        folder = Path(folder)
        frontend, llm = load_hf_parts(folder, dtype)
        tokenizer = load_tokenizer(folder)
        template = self._template(folder, tokenizer)
        return AudioLLM(
            frontend, llm, tokenizer, template, self.family.model_type, adapter=self, config=read_config(folder)
        )

    def load_frontend(self, folder: Path, dtype: torch.dtype = torch.float32) -> PromptEmbedder:
        """Frontend + the LLM's input embedding table only (`load_hf_frontend`)."""
        frontend, table = load_hf_frontend(folder, dtype)
        tokenizer = load_tokenizer(folder)
        return PromptEmbedder(frontend, table, tokenizer, self._template(Path(folder), tokenizer))

    def _template(self, folder: Path, tokenizer: Any) -> PromptTemplate:
        prompt_file = folder / PROMPT_FILE
        if prompt_file.is_file():
            return PromptTemplate.from_dict(json.loads(prompt_file.read_text()), where=str(prompt_file))
        return default_template(tokenizer, self.family)

    def save(self, model: AudioLLM, folder: Path) -> None:
        """The HF checkpoint layout (config, preprocessor config, safetensors, tokenizer) + our prompt file.

        Weights FunRL does not hold (a vision tower, Qwen2.5-Omni's talker ...) and other files of the folder
        the model was loaded from are copied from it unchanged, so the saved folder is a complete checkpoint.
        The weights get the names of that folder's layout (`checkpoint_layout`: e.g. a Hub Qwen2-Audio folder's
        ``language_model.model.*``), or the family's hub layout for a model not loaded from a folder.
        """
        folder = Path(folder)
        source = getattr(model.frontend, "source", None)
        layout = self.family.hub_layout
        if source is not None:
            _copy_other_files(Path(source), folder)
            layout = checkpoint_layout(source, self.family)
        (folder / "config.json").write_text(json.dumps(model.config, indent=2, ensure_ascii=False) + "\n")
        (folder / "preprocessor_config.json").write_text(
            json.dumps(model.frontend.extractor.to_dict(), indent=2) + "\n"
        )
        (folder / PROMPT_FILE).write_text(json.dumps(model.template.to_dict(), indent=2, ensure_ascii=False) + "\n")
        base = model.base_llm()
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(folder)
        named = {f"frontend.{k}": v for k, v in model.frontend.state_dict().items()}
        named.update({f"llm.{k}": v for k, v in model.llm_state_dict()})
        tied = bool(base.config.tie_word_embeddings)
        weights = {
            k: v.detach().to("cpu").contiguous() for k, v in to_hf_names(named, self.family, tied, layout).items()
        }
        if source is not None:
            weights.update(_unused_source_tensors(Path(source), self.family.unused_prefixes))
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        model.tokenizer.save_pretrained(folder)

    def build_tiny(
        self, folder: Path, seed: int = 0, extra_chars: str = "", instruction: str = DEFAULT_INSTRUCTION
    ) -> Path:
        """A random tiny checkpoint of this family with a locally built tokenizer (see `hf_audio_tiny`)."""
        from policy.models.hf_audio_tiny import build_tiny_hf_audio_llm

        return build_tiny_hf_audio_llm(
            folder, self.family.model_type, seed=seed, extra_chars=extra_chars, instruction=instruction
        )


for _family in FAMILIES.values():
    register_adapter(_family.model_type)(HFAudioAdapter(_family))
