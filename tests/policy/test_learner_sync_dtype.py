"""Weight sync in the rollout engine's dtype: `Learner.sync_weights(send, bucket_bytes, dtype)` casts each tensor
as it is gathered (bf16 buckets are half the bytes), and the vLLM rollout worker loads bf16 tensors into an fp32
engine (giving the log-probs of the bf16-rounded weights) and fp32 tensors into a bf16 engine (rounded there).

A 1-rank learner (gloo, in this process) makes one update and streams its weights into recorders; its process
group is gone before vLLM starts (both would own torch.distributed), so the recorded buckets are then replayed
into the worker's ``update_weights`` / ``finish_weight_update`` exactly as `RolloutSender` calls them.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import pytest
import torch
from learner_ranks import learner_cfg, make_batch

from policy.config import ModelConfig
from policy.distributed import free_port
from policy.messages import Clip, PromptBatch
from policy.models import load_audio_llm
from rollout.config import RolloutConfig

pytestmark = pytest.mark.slow
BUCKET = 200_000  # bytes: the tiny LLM (1.6 MB in fp32) arrives in several buckets


class Recorder:
    """A ``send`` for `Learner.sync_weights` that keeps the buckets (and counts ``finish``)."""

    def __init__(self) -> None:
        self.buckets: list[list] = []
        self.finished = 0

    def __call__(self, bucket: list) -> None:
        self.buckets.append([(n, t.clone()) for n, t in bucket])

    def finish(self) -> None:
        self.finished += 1


@pytest.fixture(scope="module")
def pushed(tiny_model_dir) -> dict:
    """One update on a 1-rank learner, then its weights streamed in fp32 and in bf16 (and the stats)."""
    from policy.learner import Learner

    learner = Learner(
        str(tiny_model_dir), ModelConfig(path=str(tiny_model_dir)), learner_cfg(lr=1e-2), 0, 1, "127.0.0.1", free_port()
    )
    learner.setup()
    try:
        learner.update(make_batch(1))
        out = {}
        for dtype in ("float32", "bfloat16"):
            rec = Recorder()
            out[dtype] = (rec, learner.sync_weights(rec, BUCKET, dtype=dtype))
        with pytest.raises(ValueError, match="unknown dtype 'float64'"):
            learner.sync_weights(Recorder(), BUCKET, dtype="float64")
        return out
    finally:
        learner.shutdown()


def test_bf16_sync_casts_every_tensor_and_halves_the_bytes(pushed):
    (rec32, stats32), (rec16, stats16) = pushed["float32"], pushed["bfloat16"]
    w32 = [(n, t) for b in rec32.buckets for n, t in b]
    w16 = [(n, t) for b in rec16.buckets for n, t in b]
    assert [n for n, _ in w16] == [n for n, _ in w32] and rec16.finished == rec32.finished == 1
    assert {t.dtype for _, t in w32} == {torch.float32} and {t.dtype for _, t in w16} == {torch.bfloat16}
    assert all(torch.equal(a.to(torch.bfloat16), b) for (_, a), (_, b) in zip(w32, w16))  # round to nearest
    assert stats16["bytes"] * 2 == stats32["bytes"] == sum(t.nbytes for _, t in w32)
    assert stats16["buckets"] == len(rec16.buckets) < stats32["buckets"] == len(rec32.buckets)
    for b in rec16.buckets:
        assert len(b) == 1 or sum(t.nbytes for _, t in b) <= BUCKET


def _replay(worker, rec: Recorder) -> None:
    for bucket in rec.buckets:
        worker.update_weights(bucket)
    worker.finish_weight_update()


def _reference(model_dir, rec: Recorder):
    """The starting model holding the recorded weights (cast to fp32)."""
    model = load_audio_llm(model_dir).eval()
    model.llm.load_state_dict({n: t.float() for b in rec.buckets for n, t in b}, strict=True)
    return model


def _scoring_inputs(model):
    g = torch.Generator().manual_seed(3)
    audio = [torch.randn(6, model.llm.config.hidden_size, generator=g) * 0.05 for _ in range(2)]
    embeds = [e.detach() for e in model.build_prompt_embeds(audio, [None, "ctx"])]
    prompts = PromptBatch(clips=tuple(Clip(audio=f"/x{i}.wav", text="") for i in range(2)), prompt_embeds=tuple(embeds))
    ids = torch.randint(3, model.llm.config.vocab_size, (2, 1, 8), generator=g)
    return prompts, ids, torch.ones(2, 1, 8)


def _ours(model, prompts, ids, mask):
    with torch.no_grad():
        return model.sequence_logprobs(list(prompts.prompt_embeds), ids[:, 0], mask[:, 0])[:, None]


@pytest.mark.vllm
def test_fp32_engine_takes_bf16_buckets_and_gives_the_bf16_rounded_weights_logprobs(pushed, tiny_model_dir, tmp_path):
    from rollout.vllm_worker import VLLMRolloutWorker

    (rec32, _), (rec16, _) = pushed["float32"], pushed["bfloat16"]
    start = load_audio_llm(tiny_model_dir).eval()
    folder = start.export_llm(tmp_path / "llm", untie_embeddings=True)
    prompts, ids, mask = _scoring_inputs(start)
    ref16 = _ours(_reference(tiny_model_dir, rec16), prompts, ids, mask)
    ref32 = _ours(_reference(tiny_model_dir, rec32), prompts, ids, mask)
    assert (ref16 - ref32).abs().max() > 1e-3  # bf16 rounding is visible in the log-probs
    worker = VLLMRolloutWorker(str(folder), RolloutConfig(n=1, max_new_tokens=4, max_model_len=256))
    try:
        _replay(worker, rec16)
        got16 = worker.logprobs_of(prompts, ids, mask)
        _replay(worker, rec32)
        got32 = worker.logprobs_of(prompts, ids, mask)
    finally:
        worker.shutdown()
    print(
        f"\nfp32 engine: bf16 sync vs bf16-rounded HF {(got16 - ref16).abs().max():.2e}, "
        f"fp32 sync vs HF {(got32 - ref32).abs().max():.2e}"
    )
    torch.testing.assert_close(got16, ref16, atol=1e-4, rtol=0)
    torch.testing.assert_close(got32, ref32, atol=1e-4, rtol=0)


@pytest.mark.vllm
def test_bf16_engine_rounds_fp32_buckets_as_the_learner_does(pushed, tiny_model_dir, tmp_path):
    """fp32 buckets into a bf16 engine: vLLM's loaders round them to bf16 (copy_, round to nearest even) just as
    the learner's cast does, so both pushes give the same log-probs, except for the linear biases, which
    vLLM's CPU GEMM keeps in fp32 (an fp32 bucket keeps their low bits; on GPU they are bf16 too)."""
    from rollout.vllm_worker import VLLMRolloutWorker

    (rec32, _), (rec16, _) = pushed["float32"], pushed["bfloat16"]
    w32 = {n: t for b in rec32.buckets for n, t in b}
    bias32 = Recorder()
    bias32.buckets = [[(n, w32[n] if n.endswith(".bias") else t) for n, t in b] for b in rec16.buckets]
    start = load_audio_llm(tiny_model_dir).eval()
    folder = start.export_llm(tmp_path / "llm", untie_embeddings=True)
    prompts, ids, mask = _scoring_inputs(start)
    worker = VLLMRolloutWorker(str(folder), RolloutConfig(n=1, max_new_tokens=4, max_model_len=256), dtype="bfloat16")
    try:
        got = {}
        for name, rec in (("before", None), ("fp32", rec32), ("bf16", rec16), ("bf16+fp32 bias", bias32)):
            if rec is not None:
                _replay(worker, rec)
            got[name] = worker.logprobs_of(prompts, ids, mask)
    finally:
        worker.shutdown()
    ref16 = _ours(_reference(tiny_model_dir, rec16), prompts, ids, mask)
    print(
        f"\nbf16 engine: |fp32 sync - bf16 sync| {(got['fp32'] - got['bf16']).abs().max():.2e}, "
        f"bf16 sync vs bf16-rounded fp32 HF {(got['bf16'] - ref16).abs().max():.2e}"
    )
    assert torch.equal(got["fp32"], got["bf16+fp32 bias"])
    assert (got["bf16"] - got["before"]).abs().max() > 1e-2  # the update reached the engine
    torch.testing.assert_close(got["bf16"], got["fp32"], atol=0.05, rtol=0)  # bf16 compute
    torch.testing.assert_close(got["bf16"], ref16, atol=0.1, rtol=0)
