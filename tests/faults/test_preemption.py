"""Preemption: SIGTERM / SIGINT to `python -m funrl.train` (the driver alone or its whole process group)
finishes the step in progress, writes a checkpoint, prints the resume command and exits 143 / 130; `--resume`
then continues with the same data order and a continuous step counter, and ends with the hypotheses and weights
an uninterrupted run has. The run is a Qwen2-Audio family model whose encoder trains, as in the demo recipe
(funrl/demo/grpo.yaml); a resume after SIGKILL, from another working directory, runs in test_demo_run.py."""

import os
import signal
import time

import pytest
import torch
from safetensors.torch import load_file
from train_runs import as_args, jsonl, run_train, tiny_run, wait_for_steps

from funrl.config import load_config
from funrl.data import ClipSampler, load_manifest

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]


def _weights(run) -> dict:
    return {
        f"{f.parent.name}/{f.name}/{k}": v
        for f in sorted((run / "model").rglob("*.safetensors"))
        for k, v in load_file(f).items()
    }


def test_sigterm_to_the_process_group_checkpoints_the_finished_step_and_resume_ends_where_an_uninterrupted_run_does(
    qwen2_audio_dir, small_demo_data, tmp_path
):
    sig, code = signal.SIGTERM, 143
    out, steps = tmp_path / "run", 3
    manifest = small_demo_data.manifest("rl_train")
    extra = {"run.steps": steps, "run.save_every": 100, "model.train_encoder": "true"}
    args = tiny_run(qwen2_audio_dir, manifest, out, extra)
    proc = run_train(as_args(args))
    wait_for_steps(out, proc, 1)  # one step done: the run is in its loop
    # the driver's whole process group, as `timeout`, a closing terminal or `kill -TERM -PGID` do: the local Ray
    # runs in a session of its own (funrl/local_ray.py), so it lives on while the driver finishes the step
    os.killpg(proc.pid, sig)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == code, log[-3000:]
    stopped_at = len(jsonl(out / "metrics.jsonl"))
    assert 1 <= stopped_at < steps and f"--resume {out}" in log
    assert (out / "checkpoints" / f"step_{stopped_at:06d}" / "COMPLETE").is_file()  # save_every=100: the signal

    resumed = run_train(["--resume", str(out)])
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log[-3000:]
    assert f"at step {stopped_at + 1}" in log
    assert [m["step"] for m in jsonl(out / "metrics.jsonl")] == list(range(1, steps + 1))
    cfg = load_config(str(out / "config.yaml"), [])
    expected = ClipSampler(load_manifest(cfg.data.train_manifest), cfg.run.clips_per_step, seed=cfg.run.seed)
    for rec in jsonl(out / "rollouts.jsonl"):
        assert [c["audio"] for c in rec["clips"]] == [c.audio for c in expected.next_batch()], rec["step"]

    # the same run, uninterrupted: the same hypotheses at every step (vLLM seeded per step) and the same weights
    whole = tmp_path / "whole"
    proc = run_train(as_args(args | {"run.out_dir": whole}))
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log[-3000:]
    hyps = [[c["hyps"] for c in r["clips"]] for r in jsonl(out / "rollouts.jsonl")]
    assert hyps == [[c["hyps"] for c in r["clips"]] for r in jsonl(whole / "rollouts.jsonl")]
    resumed_w, whole_w = _weights(out), _weights(whole)
    assert resumed_w.keys() == whole_w.keys() and resumed_w
    for name, w in whole_w.items():  # fp32 on one machine, same order of operations: equal to float noise
        torch.testing.assert_close(resumed_w[name], w, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_graceful_stop_flags_the_first_signal_stops_on_the_second_and_restores_handlers(sig, code):
    from funrl.preemption import GracefulStop

    before = signal.getsignal(sig)
    with GracefulStop() as stop:
        os.kill(os.getpid(), sig)
        time.sleep(0.05)  # the handler runs between bytecodes
        assert stop.requested and stop.exit_code == code
        with pytest.raises(KeyboardInterrupt, match="stopping now"):
            os.kill(os.getpid(), sig)
            time.sleep(0.05)
    assert signal.getsignal(sig) is before
