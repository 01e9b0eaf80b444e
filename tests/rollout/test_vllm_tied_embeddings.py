"""Weight sync into vLLM for an LLM with tied input/output embeddings (Qwen2/Qwen3 style).

vLLM's in-place reload never refreshes a tied output layer, so the rollout copy is exported untied and
the sync sends ``lm_head.weight`` beside ``embed_tokens``; a tied export refuses an embedding update.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

import pytest
import torch

from policy.messages import Clip, PromptBatch
from policy.models import load_audio_llm
from rollout.config import RolloutConfig

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _prompts(model, n=2, seed=3) -> PromptBatch:
    g = torch.Generator().manual_seed(seed)
    audio = [torch.randn(6, model.llm.config.hidden_size, generator=g) * 0.05 for _ in range(n)]
    embeds = model.build_prompt_embeds(audio, [None] * n)
    return PromptBatch(
        clips=tuple(Clip(audio=f"/x{i}.wav", text="") for i in range(n)),
        prompt_embeds=tuple(e.detach() for e in embeds),
    )


def test_untied_export_keeps_outputs_and_syncs_embedding_changes(tiny_model_dir, tmp_path):
    from rollout.vllm_worker import VLLMRolloutWorker

    model = load_audio_llm(tiny_model_dir).eval()
    assert model.base_llm().config.tie_word_embeddings, "the fixture must be a tied model for this test"
    folder = model.export_llm(tmp_path / "llm", untie_embeddings=True)
    worker = VLLMRolloutWorker(str(folder), RolloutConfig(n=3, max_new_tokens=8, max_model_len=256))
    try:
        with torch.no_grad():  # a learner step that moves the shared embedding matrix
            emb = model.llm.get_input_embeddings().weight
            emb.add_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(0)) * 0.2)
        worker.sync_weights(list(model.llm_state_dict()), bucket_bytes=64 << 10)
        prompts = _prompts(model)
        out = worker.generate(prompts)
        B, G, T = out.token_ids.shape
        with torch.no_grad():
            ref = model.sequence_logprobs(
                [e for e in prompts.prompt_embeds for _ in range(G)],
                out.token_ids.view(B * G, T),
                out.mask.view(B * G, T),
            ).view(B, G, T)
        assert (ref - out.sample_logprobs).abs().max().item() <= 1e-4
    finally:
        worker.shutdown()


def test_tied_export_refuses_an_embedding_update_with_advice(tiny_model_dir, tmp_path):
    from rollout.vllm_worker import VLLMRolloutWorker

    model = load_audio_llm(tiny_model_dir).eval()
    folder = model.export_llm(tmp_path / "llm")
    worker = VLLMRolloutWorker(str(folder), RolloutConfig(n=2, max_new_tokens=4, max_model_len=256))
    try:
        with pytest.raises(ValueError, match="untie_embeddings=True"):
            worker.sync_weights(list(model.llm_state_dict()))
    finally:
        worker.shutdown()
