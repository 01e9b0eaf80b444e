"""Prompt layout [prefix | audio | suffix] (policy.models.prompt), one path for rollout and learner."""

from __future__ import annotations

import pytest
import torch

from policy.models import load_audio_llm
from policy.models.prompt import PromptTemplate, build_prompt_embeds, prompt_token_ids
from policy.models.tokenizer import build_char_tokenizer


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_audio_llm(tiny_model_dir)


def test_chat_template_gives_user_turn_prefix_and_assistant_suffix():
    tpl = PromptTemplate.for_tokenizer(build_char_tokenizer(), "Transcribe:")
    assert tpl.prefix == "<|im_start|>user\n{context}"
    assert tpl.suffix == "Transcribe:<|im_end|>\n<|im_start|>assistant\n"
    sys_tpl = PromptTemplate.for_tokenizer(build_char_tokenizer(), "T", system="S")
    assert sys_tpl.prefix == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n{context}"


def test_plain_format_without_chat_template():
    tok = build_char_tokenizer()
    tok.chat_template = None
    tpl = PromptTemplate.for_tokenizer(tok, "Transcribe:")
    assert (tpl.prefix, tpl.suffix) == ("{context}", "Transcribe:\n")


def test_context_fills_slot_and_empty_context_leaves_nothing():
    tpl = PromptTemplate(prefix="A{context}B", suffix="C", context_format="[{context}]")
    assert tpl.render("hot") == ("A[hot]B", "C")
    assert tpl.render(None) == tpl.render("") == ("AB", "C")


def test_template_validation_errors():
    with pytest.raises(ValueError, match="must contain '{context}'"):
        PromptTemplate(prefix="", suffix="", context_format="no slot")
    with pytest.raises(ValueError, match="at most one"):
        PromptTemplate(prefix="{context}", suffix="{context}")
    with pytest.raises(ValueError, match=r"cfg: a prompt template needs 'prefix' and 'suffix'"):
        PromptTemplate.from_dict({"prefix": "x"}, where="cfg")


def test_prompt_ids_are_prefix_and_suffix_tokenised_separately(model):
    ids = prompt_token_ids(model.tokenizer, model.template, "北京")
    prefix, suffix = model.template.render("北京")
    assert list(ids.prefix) == model.tokenizer(prefix, add_special_tokens=False)["input_ids"]
    assert list(ids.suffix) == model.tokenizer(suffix, add_special_tokens=False)["input_ids"]
    im_start = model.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids.prefix[0] == im_start and ids.suffix[-1] == model.tokenizer.convert_tokens_to_ids("\u010a")  # "\n"
    assert model.tokenizer.decode(list(ids.prefix)) == "<|im_start|>user\nContext: 北京\n"


def test_layout_prefix_audio_suffix_rows(model):
    torch.manual_seed(0)
    hidden = model.llm.config.hidden_size
    audio = [torch.randn(7, hidden), torch.randn(3, hidden)]
    contexts = [None, "hello 我爱北京"]
    out = model.build_prompt_embeds(audio, contexts)
    emb = model.llm.get_input_embeddings()
    for a, ctx, p in zip(audio, contexts, out):
        ids = prompt_token_ids(model.tokenizer, model.template, ctx)
        n_pre, n_suf = len(ids.prefix), len(ids.suffix)
        assert p.shape == (n_pre + a.shape[0] + n_suf, hidden)
        torch.testing.assert_close(p[:n_pre], emb(torch.tensor(ids.prefix)), rtol=0, atol=0)
        torch.testing.assert_close(p[n_pre : n_pre + a.shape[0]], a, rtol=0, atol=0)
        torch.testing.assert_close(p[n_pre + a.shape[0] :], emb(torch.tensor(ids.suffix)), rtol=0, atol=0)
    assert len(prompt_token_ids(model.tokenizer, model.template, contexts[1]).prefix) == len(
        prompt_token_ids(model.tokenizer, model.template, None).prefix
    ) + len("Context: hello 我爱北京\n")


def test_function_and_method_are_the_same_path(model):
    audio = [torch.ones(2, model.llm.config.hidden_size)]
    a = model.build_prompt_embeds(audio, ["x"])[0]
    b = build_prompt_embeds(model.llm, model.tokenizer, model.template, audio, ["x"])[0]
    assert torch.equal(a, b)


def test_mismatched_contexts_and_bad_audio_width_raise(model):
    hidden = model.llm.config.hidden_size
    with pytest.raises(ValueError, match="2 audio clips but 1 contexts"):
        model.build_prompt_embeds([torch.zeros(1, hidden)] * 2, ["a"])
    with pytest.raises(ValueError, match=rf"audio embeddings must be \[L_a, {hidden}\]"):
        model.build_prompt_embeds([torch.zeros(1, hidden + 1)])


def test_load_with_prompt_override_rebuilds_template(tiny_model_dir):
    model = load_audio_llm(tiny_model_dir, prompt="请转写音频")
    assert model.template.suffix == "请转写音频<|im_end|>\n<|im_start|>assistant\n"
