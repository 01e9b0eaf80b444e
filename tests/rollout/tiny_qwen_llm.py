"""Test helper: a tiny random Qwen2ForCausalLM with a local byte-level character tokenizer,
plus independent HF references (log-probs of given tokens, greedy decoding)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from policy.models.tokenizer import _bytes_to_unicode  # GPT-2's byte table, as ByteLevel uses it

HIDDEN = 128
EOS_ID = 1


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level, one token per UTF-8 byte: <pad>=0, <eos>=1, <unk>=2, bytes 3..258 (no merges).

    Byte-level on purpose: transformers 5 loads any tokenizer saved beside a ``qwen2`` config
    as ``Qwen2Tokenizer`` with a ByteLevel decoder, ignoring ``tokenizer_class``; a plain
    character vocabulary would then decode differently in vLLM than in memory.
    """
    vocab = {"<pad>": 0, "<eos>": EOS_ID, "<unk>": 2}
    for ch in _bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


def build_tiny_qwen(out: Path, seed: int = 0) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """hidden 128, 4 heads / 2 kv heads (head_dim 32), 2 layers; saved as safetensors into ``out``."""
    tokenizer = build_tokenizer()
    cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.1,
        tie_word_embeddings=False,
        eos_token_id=EOS_ID,
        pad_token_id=0,
        bos_token_id=EOS_ID,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return model, tokenizer


@torch.no_grad()
def hf_logprobs(model, embeds: torch.Tensor, ids: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log p(ids[t] | embeds, ids[:t]) under softmax(logits / temperature), from one HF forward on
    inputs_embeds."""
    tok = model.get_input_embeddings()(torch.tensor(ids, dtype=torch.long))
    logits = model(inputs_embeds=torch.cat([embeds, tok])[None]).logits[0].float() / temperature
    L = embeds.shape[0]
    return torch.log_softmax(logits[L - 1 : L - 1 + len(ids)], -1).gather(1, torch.tensor(ids)[:, None])[:, 0]


@torch.no_grad()
def hf_greedy(model, embeds: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Greedy decoding with full re-forwards (no cache), stopping after EOS."""
    ids: list[int] = []
    for _ in range(max_new_tokens):
        tok = model.get_input_embeddings()(torch.tensor(ids, dtype=torch.long))
        logits = model(inputs_embeds=torch.cat([embeds, tok])[None]).logits[0, -1]
        ids.append(int(logits.argmax()))
        if ids[-1] == EOS_ID:
            break
    return ids
