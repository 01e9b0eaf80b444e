"""AudioLLM.sequence_logprobs: padded batch == an unpadded per-token loop (<= 1e-5 fp32), all LLM families."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy.models import load_audio_llm


def per_token_loop(llm, prompt: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | prompt, ids[:t]): one unpadded forward per token, no attention mask, no position ids."""
    emb = llm.get_input_embeddings()
    out = []
    for t, token in enumerate(ids):
        x = torch.cat([prompt, emb(torch.tensor(ids[:t], dtype=torch.long))])[None]
        logits = llm(inputs_embeds=x).logits[0, -1].double()
        out.append(torch.log_softmax(logits, -1)[token])
    return torch.stack(out).float()


def _prompts(model):
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 5000, 9000)]
    audio = model.embed_audio(model.audio_features(waves))
    return model.build_prompt_embeds(audio, [None, "北京 hotword", "x"])


@torch.no_grad()
def test_padded_batch_equals_per_token_loop(tiny_family_dir):
    model = load_audio_llm(tiny_family_dir)
    prompts = _prompts(model)
    assert len({p.shape[0] for p in prompts}) == 3  # different prompt lengths -> real padding
    lengths = [6, 1, 4, 3]
    rows = [prompts[0], prompts[1], prompts[2], prompts[0]]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, len(model.tokenizer), (4, 6), generator=g)
    mask = (torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]).float()
    ids = ids * mask.long()  # right-padded with 0
    got = model.sequence_logprobs(rows, ids, mask)
    assert got.shape == (4, 6)
    for i, n in enumerate(lengths):
        ref = per_token_loop(model.llm, rows[i], ids[i, :n].tolist())
        torch.testing.assert_close(got[i, :n], ref, rtol=0, atol=1e-5)
        assert torch.all(got[i, n:] == 0)


@torch.no_grad()
def test_forward_is_sequence_logprobs_and_default_mask_is_all_ones(tiny_model_dir):
    model = load_audio_llm(tiny_model_dir)
    prompts = _prompts(model)[:2]
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    a = model(prompts, ids)
    assert torch.equal(a, model.sequence_logprobs(prompts, ids, torch.ones(2, 3)))
    assert torch.all(a < 0)


def test_gradients_reach_llm_and_frontend(tiny_model_dir):
    model = load_audio_llm(tiny_model_dir)
    waves = [np.random.default_rng(2).standard_normal(6000).astype(np.float32) * 0.1]
    prompts = model.build_prompt_embeds(model.embed_audio(model.audio_features(waves)))
    model.sequence_logprobs(prompts, torch.tensor([[10, 11]])).sum().backward()
    assert model.llm.model.layers[0].self_attn.q_proj.weight.grad is not None
    assert model.frontend.adapter.fc1.weight.grad is not None


def test_eos_token_ids_is_im_end(tiny_model_dir):
    model = load_audio_llm(tiny_model_dir)
    assert model.eos_token_ids == [model.tokenizer.convert_tokens_to_ids("<|im_end|>")]


def _packing_case(model):
    """3 distinct prompts (different lengths), 7 rows of lengths 0..6 sharing them out of order."""
    prompts = _prompts(model)
    index = [0, 2, 0, 1, 2, 2, 1]
    lengths = [6, 1, 0, 3, 5, 2, 4]
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, len(model.tokenizer), (7, 6), generator=g)
    mask = (torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]).float()
    return prompts, index, lengths, ids * mask.long(), mask


@torch.no_grad()
def test_shared_prompt_packing_equals_per_token_loop(tiny_family_dir):
    model = load_audio_llm(tiny_family_dir)
    prompts, index, lengths, ids, mask = _packing_case(model)
    got = model.sequence_logprobs(prompts, ids, mask, prompt_index=index)
    assert got.shape == (7, 6)
    for i, n in enumerate(lengths):
        if n:
            ref = per_token_loop(model.llm, prompts[index[i]], ids[i, :n].tolist())
            torch.testing.assert_close(got[i, :n], ref, rtol=0, atol=1e-5)
        assert torch.all(got[i, n:] == 0)


def test_shared_prompt_packing_gives_the_unpacked_gradients(tiny_model_dir):
    """Gradients of a weighted sum of log-probs w.r.t. the LLM weights and the prompts themselves (the route
    to the audio encoder) are those of one prompt per row."""
    model = load_audio_llm(tiny_model_dir)
    prompts, index, _, ids, mask = _packing_case(model)
    weights = torch.linspace(-1.0, 2.0, 7)[:, None]
    grads = []
    for packed in (False, True):
        leaves = [p.detach().clone().requires_grad_(True) for p in prompts]
        model.zero_grad(set_to_none=True)
        if packed:
            lp = model.sequence_logprobs(leaves, ids, mask, prompt_index=index)
        else:
            lp = model.sequence_logprobs([leaves[j] for j in index], ids, mask)
        (lp * weights).sum().backward()
        named = {k: p.grad.clone() for k, p in model.llm.named_parameters() if p.grad is not None}
        grads.append((named, [leaf.grad for leaf in leaves]))
    (w0, p0), (w1, p1) = grads
    assert w0.keys() == w1.keys() and len(w0) > 10
    pairs = [(k, w0[k], w1[k]) for k in w0] + [(f"prompt {i}", a, b) for i, (a, b) in enumerate(zip(p0, p1))]
    for name, a, b in pairs:
        err, scale = float((b - a).abs().max()), float(a.abs().max())
        assert err <= 1e-5 * scale + 1e-7, f"{name}: max |diff| {err:.3g} against max |grad| {scale:.3g}"  # fp32 sums
    assert min(float(g.abs().max()) for g in p0) > 0  # every prompt receives a gradient


def test_shared_prompt_packing_rejects_a_bad_prompt_index(tiny_model_dir):
    model = load_audio_llm(tiny_model_dir)
    prompts, index, _, ids, mask = _packing_case(model)
    with pytest.raises(ValueError, match="prompt index 3 of row 1"):
        model.sequence_logprobs(prompts, ids, mask, prompt_index=[0, 3, 0, 1, 2, 2, 1])
    with pytest.raises(ValueError, match="6 prompt indices for 7"):
        model.sequence_logprobs(prompts, ids, mask, prompt_index=index[:6])


@torch.no_grad()
def test_temperature_gives_log_softmax_of_scaled_logits_packed_or_not(tiny_model_dir):
    model = load_audio_llm(tiny_model_dir)
    prompts, index, lengths, ids, mask = _packing_case(model)
    t = 0.7
    got = model.sequence_logprobs([prompts[j] for j in index], ids, mask, temperature=t)
    packed = model.sequence_logprobs(prompts, ids, mask, prompt_index=index, temperature=t)
    torch.testing.assert_close(packed, got, rtol=0, atol=1e-5)
    emb = model.llm.get_input_embeddings()
    for i, n in enumerate(lengths):
        if not n:
            continue
        x = torch.cat([prompts[index[i]], emb(ids[i, : n - 1])])[None]
        logits = model.llm(inputs_embeds=x).logits[0, -n:].double() / t
        want = torch.log_softmax(logits, -1).gather(-1, ids[i, :n, None])[:, 0].float()
        torch.testing.assert_close(got[i, :n], want, rtol=0, atol=1e-5)
    plain = model.sequence_logprobs([prompts[j] for j in index], ids, mask)
    assert float((plain - got).abs().max()) > 1e-2  # the temperature really changes them


def test_shared_prompt_packing_refuses_attention_that_ignores_a_4d_mask(tiny_model_dir):
    model = load_audio_llm(tiny_model_dir)
    prompts, index, _, ids, mask = _packing_case(model)
    model.llm.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="'flash_attention_2' attention.*learner.share_prompts=false"):
        model.sequence_logprobs(prompts, ids, mask, prompt_index=index)
