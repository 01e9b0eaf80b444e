"""Tiny random checkpoints of the transformers audio-LLM families (policy.models.hf_audio_llm), for tests.

Each is the real HF class with a tiny audio encoder and a 2-layer text model (hidden 64, head_dim 32: vLLM's CPU
attention needs head_dim >= 32), saved the way the real checkpoints are (config.json, model.safetensors with
the weight names of the family's Hub checkpoints, preprocessor_config.json) plus the locally built character
tokenizer (policy.models.tokenizer, whose ``<|audio|>`` token is the audio placeholder id) and our prompt
template file. Built offline in well under 1 s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import save_file

from policy.models.base import atomic_dir
from policy.models.hf_audio_llm import FAMILIES, PROMPT_FILE, checkpoint_name
from policy.models.prompt import DEFAULT_INSTRUCTION, PromptTemplate
from policy.models.tokenizer import build_char_tokenizer

AUDIO_TOKEN = "<|audio|>"
WHOLE_MODEL_CLASS = {"qwen2_5_omni": "Qwen2_5OmniForConditionalGeneration"}  # families that load only a part


def _tiny_text(model_type: str, vocab_size: int) -> dict[str, Any]:
    """A 2-layer text model, hidden 64, head_dim 32 (vLLM's CPU attention needs head_dim >= 32)."""
    return {
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": model_type != "llama",
        "rope_theta": 10000.0,
    }


def tiny_config(model_type: str, vocab_size: int, audio_token_id: int) -> Any:
    """A tiny random-init config of the family (tiny audio encoder; text part see `_tiny_text`)."""
    if model_type == "fun_asr_nano":
        return transformers.FunAsrNanoConfig(
            audio_config={
                "num_mel_bins": 80,
                "num_stacked_frames": 7,
                "hidden_size": 32,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "num_hidden_layers": 3,
                "num_timestamp_prediction_layers": 1,
                "max_position_embeddings": 1024,
            },
            adaptor_config={
                "hidden_size": 64,
                "intermediate_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "projector_hidden_size": 64,
            },
            text_config=_tiny_text("qwen3", vocab_size),
            audio_token_id=audio_token_id,
            tie_word_embeddings=True,
        )
    whisper_like = {
        "num_mel_bins": 128,
        "d_model": 32,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
    }
    if model_type == "qwen2_audio":
        return transformers.Qwen2AudioConfig(
            audio_config={"model_type": "qwen2_audio_encoder", **whisper_like, "max_source_positions": 1500},
            # untied, as Qwen2-Audio-7B: transformers never ties this class's head, vLLM would with this True
            text_config={**_tiny_text("qwen2", vocab_size), "tie_word_embeddings": False},
            audio_token_index=audio_token_id,
        )
    if model_type == "qwen3_asr":
        return transformers.Qwen3ASRConfig(
            audio_config={
                "model_type": "qwen3_asr_encoder",
                **whisper_like,
                "output_dim": 64,
                "n_window": 50,
                "n_window_infer": 400,
                "downsample_hidden_size": 16,
                "max_position_embeddings": 64,
            },
            text_config=_tiny_text("qwen3", vocab_size),
            audio_token_id=audio_token_id,
            pad_token_id=0,
            timestamp_token_id=audio_token_id,
        )
    if model_type == "voxtral":
        return transformers.VoxtralConfig(
            audio_config={
                "model_type": "voxtral_encoder",
                "num_mel_bins": 128,
                "hidden_size": 32,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "max_source_positions": 1500,
                "vocab_size": 8,
            },
            text_config=_tiny_text("llama", vocab_size),
            audio_token_id=audio_token_id,
        )
    if model_type in ("qwen2_5_omni_thinker", "qwen2_5_omni"):
        return _tiny_omni(model_type, vocab_size, audio_token_id)
    raise ValueError(f"no tiny config for model_type {model_type!r}; known: {', '.join(sorted(FAMILIES))}")


def _tiny_omni(model_type: str, vocab_size: int, audio_token_id: int) -> Any:
    """Qwen2.5-Omni thinker (tiny audio + vision towers); M-RoPE sections sum to head_dim / 2 = 16."""
    text = _tiny_text("qwen2", vocab_size)
    text.update(
        model_type="qwen2_5_omni_text",
        tie_word_embeddings=False,
        rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6], "rope_type": "default"},
    )
    text.pop("head_dim")  # Qwen2.5-Omni derives it: hidden_size / num_attention_heads = 32
    thinker = transformers.Qwen2_5OmniThinkerConfig(
        audio_config={
            "num_mel_bins": 128,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "d_model": 32,
            "output_dim": 64,
            "n_window": 50,
            "max_source_positions": 1500,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [0],
        },
        text_config=text,
        audio_token_index=audio_token_id,
        image_token_index=audio_token_id + 1,
        video_token_index=audio_token_id + 2,
        audio_start_token_id=audio_token_id + 1,
        audio_end_token_id=audio_token_id + 2,
        vision_start_token_id=audio_token_id + 1,
    )
    if model_type == "qwen2_5_omni_thinker":
        return thinker
    return transformers.Qwen2_5OmniConfig(thinker_config=thinker.to_dict(), enable_audio_output=False)


def _rewrite_in_hub_layout(model: Any, family: Any, folder: Path) -> None:
    """Replace the weights ``save_pretrained`` wrote with the module's tensors under the family's hub names.

    transformers 5.19's ``save_pretrained`` of a Qwen2-Audio / Voxtral model built from its config (not loaded
    from a folder, whose layout it would keep) writes the text weights as ``language_model.model.model.*`` (it
    reverses two of its renamings), a layout of no Hub checkpoint that vLLM refuses; the real checkpoints have
    ``language_model.model.*``."""
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    weights = {
        checkpoint_name(name, family, family.hub_layout): tensor.contiguous()
        for name, tensor in model.state_dict().items()
        if not (tied and name == "lm_head.weight")
    }
    for path in folder.glob("model*.safetensors*"):
        path.unlink()
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def build_tiny_hf_audio_llm(
    folder: str | Path, model_type: str, seed: int = 0, extra_chars: str = "", instruction: str = DEFAULT_INSTRUCTION
) -> Path:
    """Write a random tiny checkpoint of the family ``model_type`` into ``folder`` (replaced atomically)."""
    if model_type not in FAMILIES:
        raise ValueError(f"no transformers audio-LLM family {model_type!r}; known: {', '.join(sorted(FAMILIES))}")
    family = FAMILIES[model_type]
    tokenizer = build_char_tokenizer(extra_chars)
    config = tiny_config(model_type, len(tokenizer), tokenizer.convert_tokens_to_ids(AUDIO_TOKEN))
    text = config.get_text_config()
    text.eos_token_id, text.pad_token_id, text.bos_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id, None
    torch.manual_seed(seed)
    model = getattr(transformers, WHOLE_MODEL_CLASS.get(model_type, family.model_class))(config).eval()
    model.generation_config = transformers.GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    template = PromptTemplate.for_tokenizer(tokenizer, instruction)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if family.legacy_names:
            _rewrite_in_hub_layout(model, family, tmp)
        extractor = family.extractor(tmp, getattr(config, family.sub_config) if family.sub_config else config)
        hf_extractor: Any = extractor  # a transformers feature extractor (callable, has to_dict)
        (tmp / "preprocessor_config.json").write_text(json.dumps(hf_extractor.to_dict(), indent=2) + "\n")
        (tmp / PROMPT_FILE).write_text(json.dumps(template.to_dict(), indent=2, ensure_ascii=False) + "\n")
        tokenizer.save_pretrained(tmp)
    return Path(folder)
