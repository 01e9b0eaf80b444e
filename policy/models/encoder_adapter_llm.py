"""The ``encoder_adapter_llm`` adapter: FireRedASR-LLM / Fun-ASR-nano style Encoder-Adapter-LLM.

80-dim Kaldi fbank (25 ms / 10 ms, optional global CMVN) -> Conformer encoder with conv2d subsampling x4
(40 ms) -> optional CTC head (vocabulary = the LLM tokenizer's) -> adapter: 2-frame splicing (80 ms) +
Linear-ReLU-Linear into the LLM's hidden size -> any decoder LLM that transformers and vLLM load.

``"encoder": {"type": "whisper", ...}`` puts a transformers ``WhisperEncoder`` in the Conformer's place, on
Whisper log-mel features of each clip as it is (no 30 s padding; 20 ms frames; `policy.models.whisper_encoder`,
docs/whisper.md); such a config has no ``features`` section and no CMVN. ``type`` absent = ``conformer``.

Folder layout::

    config.json            {"model_type": "encoder_adapter_llm", "features": {...}, "cmvn": bool,
                            "encoder": {...}, "adapter": {...}, "ctc_vocab_size": int | null, "prompt": {...}}
    frontend.safetensors   encoder + adapter (+ ctc, + cmvn_mean / cmvn_istd)
    llm/                   a plain HF causal-LM folder with its tokenizer (vLLM loads it as it is)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from policy.models.base import AudioLLM, FeatureBatch, load_tokenizer, read_config, register_adapter
from policy.models.conformer import ConformerEncoder, EncoderConfig, SpliceAdapter
from policy.models.features import FbankConfig, fbank_batch
from policy.models.prompt import PromptTemplate
from policy.models.prompt_embedder import PromptEmbedder, load_embedding_table
from policy.models.tokenizer import build_char_tokenizer
from policy.models.whisper_encoder import ENCODER_TYPE as WHISPER
from policy.models.whisper_encoder import WhisperAudioEncoder, WhisperEncoderConfig

MODEL_TYPE = "encoder_adapter_llm"
FRONTEND_FILE = "frontend.safetensors"
LLM_DIR = "llm"
DEFAULT_INSTRUCTION = "Transcribe the audio."


@dataclass(frozen=True)
class AdapterConfig:
    splice: int = 2
    hidden_size: int = 512
    llm_hidden_size: int = 128

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"adapter.{f.name} must be a positive integer, got {value!r}")


def _section(cls: type, data: Any, where: str) -> Any:
    """A config dataclass from a JSON object, naming the file/key on a bad or unknown key."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {known}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


class EncoderAdapterFrontend(nn.Module):
    """Features, Conformer encoder, splice adapter (and optional CTC head) of an encoder_adapter_llm model."""

    def __init__(
        self,
        fbank: FbankConfig | None,
        encoder: EncoderConfig | WhisperEncoderConfig,
        adapter: AdapterConfig,
        cmvn: bool = False,
        ctc_vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        self.encoder: nn.Module
        if isinstance(encoder, WhisperEncoderConfig):
            if fbank is not None or cmvn:
                raise ValueError(
                    "a whisper encoder computes its own log-mel features: no 'features' section and 'cmvn': false"
                )
            self.encoder = WhisperAudioEncoder(encoder)
        else:
            fbank = fbank or FbankConfig()
            if encoder.n_mels != fbank.num_mel_bins:
                raise ValueError(f"encoder.n_mels {encoder.n_mels} != features.num_mel_bins {fbank.num_mel_bins}")
            self.encoder = ConformerEncoder(encoder)
        self.fbank_cfg = fbank
        self.adapter = SpliceAdapter(encoder.d_model, adapter.splice, adapter.hidden_size, adapter.llm_hidden_size)
        self.ctc = nn.Linear(encoder.d_model, ctc_vocab_size) if ctc_vocab_size else None
        if cmvn:  # global (mean, 1/std) per mel bin; identity until set from data
            assert fbank is not None  # a whisper encoder with cmvn was refused above
            self.register_buffer("cmvn_mean", torch.zeros(fbank.num_mel_bins))
            self.register_buffer("cmvn_istd", torch.ones(fbank.num_mel_bins))

    @property
    def has_cmvn(self) -> bool:
        return hasattr(self, "cmvn_mean")

    def set_cmvn(self, mean: np.ndarray | Tensor, std: np.ndarray | Tensor, floor: float = 1e-5) -> None:
        """Set the global CMVN statistics (per mel bin) from data, e.g. before an SFT stage."""
        if not self.has_cmvn:
            raise ValueError("this model was built without CMVN (config 'cmvn': false)")
        mean_t = torch.as_tensor(np.asarray(mean), dtype=torch.float32)
        std_t = torch.as_tensor(np.asarray(std), dtype=torch.float32)
        if mean_t.shape != self.cmvn_mean.shape or std_t.shape != self.cmvn_mean.shape:
            raise ValueError(
                f"CMVN mean/std must have shape {tuple(self.cmvn_mean.shape)}, "
                f"got {tuple(mean_t.shape)} and {tuple(std_t.shape)}"
            )
        with torch.no_grad():
            self.cmvn_mean.copy_(mean_t)
            self.cmvn_istd.copy_(1.0 / std_t.clamp(min=floor))

    def features(self, waves: Sequence[np.ndarray]) -> FeatureBatch:
        if isinstance(self.encoder, WhisperAudioEncoder):
            return self.encoder.features(list(waves))
        cmvn = None
        if self.has_cmvn:
            cmvn = (self.cmvn_mean.float().cpu().numpy(), self.cmvn_istd.float().cpu().numpy())
        assert self.fbank_cfg is not None  # set for every encoder but whisper
        return fbank_batch(list(waves), self.fbank_cfg, cmvn)

    def encode(self, batch: FeatureBatch) -> tuple[Tensor, Tensor]:
        """Encoder states ``[B, T_enc, d]`` (40 ms frames; whisper: 20 ms) and their lengths ``[B]``."""
        p = next(self.parameters())
        batch = batch.to(p.device, p.dtype)
        return self.encoder(batch.feats, batch.lengths)

    def ctc_logits(self, batch: FeatureBatch) -> tuple[Tensor, Tensor]:
        """CTC head logits ``[B, T_enc, V]`` and lengths (for an SFT stage's auxiliary loss)."""
        if self.ctc is None:
            raise ValueError("this model has no CTC head (config ctc_vocab_size is null)")
        enc, lengths = self.encode(batch)
        return self.ctc(enc), lengths

    def forward(self, batch: FeatureBatch) -> list[Tensor]:
        """Per clip audio embeddings ``[ceil(T_enc / splice), llm_hidden_size]``.

        Each is a copy, not a view of the padded batch: FSDP2 hooks the module's outputs for its backward
        all-gather, and a view output would lose that hook to any later in-place op."""
        return self.adapt(*self.encode(batch))

    def adapt(self, enc: Tensor, lengths: Tensor) -> list[Tensor]:
        """Per clip audio embeddings from encoder states ``[B, T_enc, d]`` and their lengths ``[B]``."""
        out, out_lengths = self.adapter(enc, lengths)
        return [out[i, :n].clone() for i, n in enumerate(out_lengths.tolist())]


def frontend_from_config(config: dict[str, Any], where: str) -> EncoderAdapterFrontend:
    """The (random-init) frontend a config.json describes."""
    for key in ("encoder", "adapter"):
        if key not in config:
            raise ValueError(f"{where}: missing key {key!r}")
    encoder = dict(config["encoder"]) if isinstance(config["encoder"], dict) else config["encoder"]
    kind = encoder.pop("type", "conformer") if isinstance(encoder, dict) else "conformer"
    if kind not in ("conformer", WHISPER):
        raise ValueError(f"{where}: encoder.type {kind!r} is not one of conformer, {WHISPER}")
    if kind == WHISPER and ("features" in config or config.get("cmvn")):
        raise ValueError(
            f"{where}: a whisper encoder computes its own log-mel features; remove 'features' and set 'cmvn': false"
        )
    return EncoderAdapterFrontend(
        fbank=None if kind == WHISPER else _section(FbankConfig, config.get("features", {}), f"{where}: features"),
        encoder=_section(WhisperEncoderConfig if kind == WHISPER else EncoderConfig, encoder, f"{where}: encoder"),
        adapter=_section(AdapterConfig, config["adapter"], f"{where}: adapter"),
        cmvn=bool(config.get("cmvn", False)),
        ctc_vocab_size=config.get("ctc_vocab_size"),
    )


def _load_frontend(folder: Path) -> tuple[dict[str, Any], EncoderAdapterFrontend]:
    """(config.json, the frontend with its weights) of an ``encoder_adapter_llm`` folder."""
    where = str(folder / "config.json")
    config = read_config(folder)
    frontend = frontend_from_config(config, where)
    path = folder / FRONTEND_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (encoder + adapter weights)")
    missing, unexpected = frontend.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match {where}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return config, frontend


def _check_hidden(frontend: EncoderAdapterFrontend, table: nn.Module, folder: Path) -> None:
    hidden = table.weight.shape[-1]
    if hidden != frontend.adapter.fc2.out_features:
        raise ValueError(
            f"{folder / 'config.json'}: adapter.llm_hidden_size {frontend.adapter.fc2.out_features} != the LLM's "
            f"hidden size {hidden} ({folder / LLM_DIR})"
        )


def _template(config: dict[str, Any], tokenizer: Any, where: str) -> PromptTemplate:
    if "prompt" in config:
        return PromptTemplate.from_dict(config["prompt"], where=f"{where}: prompt")
    return PromptTemplate.for_tokenizer(tokenizer, DEFAULT_INSTRUCTION)


def _check_llm_folder(folder: Path) -> None:
    if not folder.is_dir() or not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{folder}: expected an HF causal-LM folder with *.safetensors weights")


def _load_llm(folder: Path, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    _check_llm_folder(folder)
    tokenizer = load_tokenizer(folder)  # first: a missing tokenizer fails before the weights load
    llm = transformers.AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=dtype
    )
    return llm.eval(), tokenizer


# ------------------------------------------------------------------------------------------ tiny models

SIZES: dict[str, dict[str, Any]] = {  # text head_dim 32 (vLLM's CPU attention needs >= 32)
    "tiny": {
        "llm": dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
        ),
        "encoder": EncoderConfig(d_model=96, n_heads=4, n_layers=2, ffn_dim=192, conv_kernel=7, subsample_channels=8),
        "whisper": WhisperEncoderConfig(d_model=96, n_heads=4, n_layers=2, ffn_dim=192),
        "adapter_hidden": 256,
    },
    "demo": {
        "llm": dict(
            hidden_size=192,
            intermediate_size=512,
            num_hidden_layers=3,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=32,
        ),
        "encoder": EncoderConfig(
            d_model=144, n_heads=4, n_layers=3, ffn_dim=576, conv_kernel=15, subsample_channels=16
        ),
        "whisper": WhisperEncoderConfig(d_model=144, n_heads=4, n_layers=3, ffn_dim=576),
        "adapter_hidden": 384,
    },
    "100m": {  # a ~100 M-parameter LLM (benchmarks of the weight sync), the tiny frontend
        "llm": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=4,
            head_dim=64,
        ),
        "encoder": EncoderConfig(d_model=96, n_heads=4, n_layers=2, ffn_dim=192, conv_kernel=7, subsample_channels=8),
        "whisper": WhisperEncoderConfig(d_model=96, n_heads=4, n_layers=2, ffn_dim=192),
        "adapter_hidden": 256,
    },
}
LLM_FAMILIES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", True),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", True),
    "llama": ("LlamaConfig", "LlamaForCausalLM", False),
}  # (config, model, tied embeddings)


def tiny_llm(family: str, tokenizer: Any, size: str = "tiny") -> nn.Module:
    """A random causal LM of the family, sized by ``SIZES[size]``, vocabulary = the tokenizer's."""
    if family not in LLM_FAMILIES:
        raise ValueError(f"unknown LLM family {family!r}; known: {', '.join(LLM_FAMILIES)}")
    cfg_name, cls_name, tied = LLM_FAMILIES[family]
    config = getattr(transformers, cfg_name)(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=tied,
        initializer_range=0.1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **SIZES[size]["llm"],
    )
    llm = getattr(transformers, cls_name)(config).eval()
    llm.generation_config = transformers.GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    return llm


@register_adapter(MODEL_TYPE)
class EncoderAdapterLLM:
    """Loader / saver of ``encoder_adapter_llm`` folders (see module doc)."""

    def load(self, folder: Path, dtype: torch.dtype = torch.float32) -> AudioLLM:
        folder = Path(folder)
        config, frontend = _load_frontend(folder)
        llm, tokenizer = _load_llm(folder / LLM_DIR, dtype)
        _check_hidden(frontend, llm.get_input_embeddings(), folder)
        template = _template(config, tokenizer, str(folder / "config.json"))
        return AudioLLM(frontend.to(dtype).eval(), llm, tokenizer, template, MODEL_TYPE, adapter=self, config=config)

    def load_frontend(self, folder: Path, dtype: torch.dtype = torch.float32) -> PromptEmbedder:
        """Frontend + the LLM's input embedding table only (`policy.models.prompt_embedder`)."""
        folder = Path(folder)
        config, frontend = _load_frontend(folder)
        _check_llm_folder(folder / LLM_DIR)
        tokenizer = load_tokenizer(folder / LLM_DIR)
        table = load_embedding_table(folder / LLM_DIR, dtype)
        _check_hidden(frontend, table, folder)
        template = _template(config, tokenizer, str(folder / "config.json"))
        return PromptEmbedder(frontend.to(dtype).eval(), table, tokenizer, template)

    def save(self, model: AudioLLM, folder: Path) -> None:
        """Write config.json, frontend.safetensors and llm/ (LoRA weights merged) into ``folder``."""
        config = dict(model.config)
        config["model_type"] = MODEL_TYPE
        config["prompt"] = model.template.to_dict()
        (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.frontend.state_dict().items()}
        save_file(state, str(folder / FRONTEND_FILE), metadata={"format": "pt"})
        model.export_llm(folder / LLM_DIR)

    def build_tiny(
        self,
        folder: Path,
        llm: str = "qwen2",
        seed: int = 0,
        size: str = "tiny",
        ctc: bool = True,
        cmvn: bool = False,
        extra_chars: str = "",
        instruction: str = DEFAULT_INSTRUCTION,
        encoder: str = "conformer",
        whisper: WhisperEncoderConfig | None = None,
        splice: int = 2,
    ) -> Path:
        """A random checkpoint (tokenizer built locally, LLM family ``llm``, ``encoder`` conformer or whisper)
        written to ``folder``; ``whisper`` replaces the size's whisper encoder section (e.g. a pretrained one's,
        whose weights are loaded afterwards); the adapter stacks ``splice`` encoder frames per audio token."""
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
        if encoder not in ("conformer", WHISPER):
            raise ValueError(f"unknown encoder {encoder!r}; known: conformer, {WHISPER}")
        torch.manual_seed(seed)
        tokenizer = build_char_tokenizer(extra_chars)
        lm = tiny_llm(llm, tokenizer, size)
        enc = (whisper or SIZES[size][WHISPER]) if encoder == WHISPER else SIZES[size]["encoder"]
        adapter = AdapterConfig(
            splice=splice, hidden_size=SIZES[size]["adapter_hidden"], llm_hidden_size=lm.config.hidden_size
        )
        fbank = None if encoder == WHISPER else FbankConfig()
        frontend = EncoderAdapterFrontend(
            fbank, enc, adapter, cmvn=cmvn, ctc_vocab_size=len(tokenizer) if ctc else None
        ).eval()
        config = {
            "model_type": MODEL_TYPE,
            **({"features": fbank.to_dict()} if fbank else {}),
            "cmvn": cmvn,
            "encoder": enc.to_dict(),
            "adapter": asdict(adapter),
            "ctc_vocab_size": len(tokenizer) if ctc else None,
        }
        template = PromptTemplate.for_tokenizer(tokenizer, instruction)
        model = AudioLLM(frontend, lm, tokenizer, template, MODEL_TYPE, adapter=self, config=config)
        return model.save(folder)
