"""AudioLLM.sequence_logprobs: padded batch == an unpadded per-token loop (<= 1e-5 fp32), all LLM families."""
from __future__ import annotations

import numpy as np
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
