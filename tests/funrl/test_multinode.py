"""Two Ray nodes on one machine: a head (`ray start --head`) and a second raylet (`ray start --address`), each
with a custom resource standing in for its role. `python -m funrl.train ray.address=auto` places the rollout
engine on one and the learner rank on the other (ray.rollout_resources / ray.learner_resources), trains one step
off (run.async_steps=1: the engine samples step t+1 while the learner updates on step t, as a split placement runs
on GPUs), and a `--resume` on the same cluster continues the step counter."""

import re
import secrets

import pytest
from train_runs import as_args, jsonl, run_train, tiny_run

from funrl.local_ray import LocalRay

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

_PLACED = re.compile(r"\[funrl\] placement: rollout worker 0 -> node (\w+); learner rank 0 -> node (\w+)")


def test_engine_and_learner_on_two_nodes_train_and_resume_through_ray_address_auto(
    tiny_model_dir, small_demo_data, tmp_path, monkeypatch
):
    token = secrets.token_hex(32)  # the cluster's token: both raylets and the driver hold it
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "run"
    roles = {"ray.rollout_resources": "{rollout_node: 1}", "ray.learner_resources": "{learner_node: 1}"}
    extra = {"run.steps": 2, "run.save_every": 1, "ray.address": "auto", "ray.placement_strategy": "SPREAD", **roles}
    extra |= {"run.async_steps": 1, "learner.tis_cap": 2.0}
    args = tiny_run(tiny_model_dir, small_demo_data.manifest("rl_train"), out, extra)
    del args["ray.num_cpus"]  # joining a cluster: its nodes have the CPUs
    with LocalRay(2, 0, resources={"rollout_node": 1}) as head:
        with LocalRay(2, 0, resources={"learner_node": 1}, join=head.address):
            env = {"RAY_ADDRESS": head.address, "RAY_AUTH_TOKEN": token}  # what `ray.address=auto` finds
            proc = run_train(as_args(args), env_extra=env)
            log = proc.communicate(timeout=600)[0]
            assert proc.returncode == 0, log[-4000:]
            placed = _PLACED.search(log)
            assert placed is not None, log[-4000:]
            assert placed.group(1) != placed.group(2)  # two raylets: the engine and the rank on different nodes
            assert [m["step"] for m in jsonl(out / "metrics.jsonl")] == [1, 2]

            resumed = run_train(["--resume", str(out), "run.steps=3"], env_extra=env)
            log = resumed.communicate(timeout=600)[0]
            assert resumed.returncode == 0, log[-4000:]
            assert "at step 3" in log
            again = _PLACED.search(log)
            assert again is not None and again.groups() == placed.groups()  # each role on its node again
    metrics = jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    # step 1 and the first step after the resume are sampled in the step, on the learner's weights; step 2 was
    # sampled during step 1's update, one version behind
    assert [m["policy_version.lag"] for m in metrics] == [0, 1, 0]
    assert metrics[1]["time.wait"] >= 0 and metrics[1]["time.generate"] > 0
