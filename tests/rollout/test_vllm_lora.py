"""VLLMRolloutWorker with enable_lora: peft adapters (set_lora versions) and full reloads, against HF/peft."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from tiny_qwen_llm import HIDDEN, build_tiny_qwen, hf_greedy, hf_logprobs

from policy.messages import Clip, PromptBatch
from rollout.config import RolloutConfig

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
TOL = 1e-4
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_qwen_lora")
    model, _ = build_tiny_qwen(folder, seed=11)
    return folder, model


@pytest.fixture(scope="module")
def worker(tiny):
    from rollout.vllm_worker import VLLMRolloutWorker

    cfg = RolloutConfig(n=2, max_new_tokens=8, max_model_len=128, seed=0)
    w = VLLMRolloutWorker(str(tiny[0]), cfg, dtype="float32", enable_lora=True, max_lora_rank=8)
    yield w
    w.shutdown()


def _adapter(base, folder, seed):
    """A peft LoRA (r=8) on every projection with random, nonzero A and B; saved to ``folder``."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False)
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    peft_model.save_pretrained(folder, safe_serialization=True)
    return peft_model.eval()


def _case():
    g = torch.Generator().manual_seed(12)
    prompts = PromptBatch(
        clips=(Clip(audio="/a.wav", text=""), Clip(audio="/b.wav", text="")),
        prompt_embeds=(torch.randn(6, HIDDEN, generator=g), torch.randn(3, HIDDEN, generator=g)),
    )
    token_ids = torch.randint(3, 259, (2, 1, 7), generator=g)
    return prompts, token_ids, torch.ones(2, 1, 7)


def _assert_engine_equals(worker, model, prompts, token_ids, mask):
    got = worker.logprobs_of(prompts, token_ids, mask)
    for b in range(2):
        ref = hf_logprobs(model, prompts.prompt_embeds[b], token_ids[b, 0].tolist())
        torch.testing.assert_close(got[b, 0], ref, atol=TOL, rtol=0)
    greedy = worker.generate(prompts, greedy=True)
    for b in range(2):
        n = int(greedy.mask[b, 0].sum())
        assert greedy.token_ids[b, 0, :n].tolist() == hf_greedy(model, prompts.prompt_embeds[b], 8)
    return got


def test_set_lora_versions_match_peft_and_clear_lora_restores_base(worker, tiny, tmp_path):
    base = tiny[1]
    prompts, token_ids, mask = _case()
    before = _assert_engine_equals(worker, base, prompts, token_ids, mask)
    first = _adapter(base, tmp_path / "v1", seed=1)
    worker.set_lora(str(tmp_path / "v1"))
    with_first = _assert_engine_equals(worker, first, prompts, token_ids, mask)
    assert (with_first - before).abs().max() > 1e-2
    # a new version in a new folder gets a new id, so vLLM does not reuse the cached first adapter
    second = _adapter(base, tmp_path / "v2", seed=2)
    worker.set_lora(str(tmp_path / "v2"))
    with_second = _assert_engine_equals(worker, second, prompts, token_ids, mask)
    assert (with_second - with_first).abs().max() > 1e-2
    sampled = worker.generate(prompts)  # sampling log-probs under the adapter
    for b in range(2):
        for h in range(2):
            n = int(sampled.mask[b, h].sum())
            ref = hf_logprobs(second, prompts.prompt_embeds[b], sampled.token_ids[b, h, :n].tolist())
            torch.testing.assert_close(sampled.sample_logprobs[b, h, :n], ref, atol=TOL, rtol=0)
    worker.clear_lora()
    torch.testing.assert_close(worker.logprobs_of(prompts, token_ids, mask), before, atol=TOL, rtol=0)


def test_full_update_works_on_a_lora_enabled_engine(worker, tiny):
    from transformers import Qwen2ForCausalLM

    base = tiny[1]
    prompts, token_ids, mask = _case()
    g = torch.Generator().manual_seed(13)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.state_dict().items()}
    perturbed = Qwen2ForCausalLM(base.config).eval()
    perturbed.load_state_dict(state)
    try:
        worker.sync_weights(state.items(), bucket_bytes=32 << 10)
        _assert_engine_equals(worker, perturbed, prompts, token_ids, mask)
    finally:
        worker.sync_weights(base.state_dict().items())
    _assert_engine_equals(worker, base, prompts, token_ids, mask)


def test_set_lora_needs_a_peft_folder(worker, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        worker.set_lora(str(tmp_path))


@pytest.mark.parametrize("r, cap", [(1, 1), (2, 8), (8, 8), (12, 16), (24, 32), (300, 320), (512, 512)])
def test_lora_rank_rounds_up_to_a_cap_vllm_accepts(r, cap):
    import typing

    from vllm.config.lora import MaxLoRARanks

    from rollout.vllm_worker import vllm_max_lora_rank

    assert vllm_max_lora_rank(r) == cap
    assert cap in typing.get_args(MaxLoRARanks)


def test_lora_rank_above_vllm_largest_is_a_config_error():
    from policy.config import ConfigError, LoraConfig
    from rollout.vllm_worker import vllm_max_lora_rank

    with pytest.raises(ValueError, match="largest LoRA rank"):
        vllm_max_lora_rank(513)
    with pytest.raises(ConfigError, match="learner.lora.r"):
        LoraConfig(r=513)
