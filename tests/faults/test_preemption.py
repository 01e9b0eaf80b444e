"""Preemption: SIGTERM / SIGINT to the driver of `python -m funrl.train` finishes the step in progress, writes a
checkpoint, prints the resume command and exits 143 / 130; `--resume` then continues with the same data order
and a continuous step counter, as an uninterrupted run would."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from funrl.config import load_config
from funrl.data import ClipSampler, load_manifest

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    from funrl.demo.build import build_demo_data
    from funrl.demo.plan import DemoSizes
    return build_demo_data(tmp_path_factory.mktemp("demo"), seed=0, sizes=DemoSizes.small(), progress=False)


def _train(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0", RAY_AUTH_MODE="disabled")
    return subprocess.Popen([sys.executable, "-m", "funrl.train", "--no-demo", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def test_sigterm_to_the_driver_checkpoints_the_finished_step_and_resume_continues(tiny_model_dir, demo_data,
                                                                                 tmp_path):
    sig, code = signal.SIGTERM, 143
    out, steps = tmp_path / "run", 5
    args = {"model.path": tiny_model_dir, "data.train_manifest": demo_data.manifest("rl_train"), "rollout.n": 4,
            "rollout.max_new_tokens": 8, "rollout.kv_cache_memory_bytes": 32 << 20, "learner.micro_batch": 16,
            "run.steps": steps, "run.clips_per_step": 4, "run.out_dir": out, "run.save_every": 100,
            "ray.num_cpus": 3}
    proc = _train([f"{k}={v}" for k, v in args.items()])
    deadline = time.time() + 300
    while len(_lines(out / "metrics.jsonl")) < 1:      # one step done: the run is in its loop
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    proc.send_signal(sig)                              # the driver only, as `kill PID` or a scheduler does
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == code, log[-3000:]
    stopped_at = len(_lines(out / "metrics.jsonl"))
    assert 1 <= stopped_at < steps and f"--resume {out}" in log
    assert (out / "checkpoints" / f"step_{stopped_at:06d}" / "COMPLETE").is_file()   # save_every=100: the signal

    resumed = _train(["--resume", str(out)])
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log[-3000:]
    assert f"at step {stopped_at + 1}" in log
    assert [m["step"] for m in _lines(out / "metrics.jsonl")] == list(range(1, steps + 1))
    cfg = load_config(str(out / "config.yaml"), [])
    expected = ClipSampler(load_manifest(cfg.data.train_manifest), cfg.run.clips_per_step, seed=cfg.run.seed)
    for rec in _lines(out / "rollouts.jsonl"):
        assert [c["audio"] for c in rec["clips"]] == [c.audio for c in expected.next_batch()], rec["step"]


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_graceful_stop_flags_the_first_signal_stops_on_the_second_and_restores_handlers(sig, code):
    from funrl.preemption import GracefulStop
    before = signal.getsignal(sig)
    with GracefulStop() as stop:
        os.kill(os.getpid(), sig)
        time.sleep(0.05)                                  # the handler runs between bytecodes
        assert stop.requested and stop.exit_code == code
        with pytest.raises(KeyboardInterrupt, match="stopping now"):
            os.kill(os.getpid(), sig)
            time.sleep(0.05)
    assert signal.getsignal(sig) is before
