"""policy.models.tokenizer.build_char_tokenizer: local character tokenizer, same after reload by any family."""

from __future__ import annotations

import pytest
import transformers

from policy.models.tokenizer import CJK_CHARS, SPECIAL_TOKENS, build_char_tokenizer

TEXT = "<|im_start|>user\nHello, World! 我爱北京。 x=3.5\n<|audio|><|im_end|>"


def test_every_character_is_one_token():
    tok = build_char_tokenizer()
    text = "Hello, World! 我爱北京。 x=3.5"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


def test_special_tokens_are_single_ids_and_eos_pad_set():
    tok = build_char_tokenizer()
    for s in SPECIAL_TOKENS:
        assert tok(s, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(s)]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert (
        tok.decode(tok(TEXT, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
        == "user\nHello, World! 我爱北京。 x=3.5\n"
    )


def test_unlisted_characters_still_encode_as_bytes_and_round_trip():
    tok = build_char_tokenizer()
    ids = tok("é日本語", add_special_tokens=False)["input_ids"]
    assert len(ids) > 4 and tok.decode(ids) == "é日本語"
    extra = build_char_tokenizer(extra_chars="語")
    assert len(extra) == len(tok) + 2  # one 2-byte intermediate + the character (first two bytes are new)
    assert len(extra("語", add_special_tokens=False)["input_ids"]) == 1


def test_size_and_cjk_coverage():
    tok = build_char_tokenizer()
    assert len(tok) < 1000
    assert all(len(tok(c, add_special_tokens=False)["input_ids"]) == 1 for c in CJK_CHARS)


@pytest.mark.parametrize("config_cls", ["Qwen2Config", "Qwen3Config", "LlamaConfig"])
def test_reload_beside_each_llm_config_is_identical(tmp_path, config_cls):
    tok = build_char_tokenizer()
    getattr(transformers, config_cls)().save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert again(TEXT, add_special_tokens=False)["input_ids"] == ids
    assert again.decode(ids) == TEXT and len(again) == len(tok)
    assert again.eos_token_id == tok.eos_token_id and again.pad_token_id == tok.pad_token_id
    msgs = [{"role": "user", "content": "hi"}]
    assert (
        again.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
