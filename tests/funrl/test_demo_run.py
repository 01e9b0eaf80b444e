"""The built-in demo path (`python -m funrl.train` with no config) at reduced size, as a new user runs it: the
demo data (the session's build of it, reused as the demo reuses its own: building it is pinned in test_demo.py),
the shipped starting model with its encoder training (the demo recipe), eval before, GRPO steps, a SIGKILL after
a checkpoint, `--resume` from another directory, eval after and the before/after table."""

import json
import os
import signal

import pytest
from train_runs import jsonl, run_train, wait_for

from funrl.eval import EvalReport

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]
TABLE_ROWS = ("WER", "CER (zh)", "keyword recall", "hallucination rate (noise clips)", "language mismatch rate")


def test_small_demo_killed_after_a_checkpoint_resumes_elsewhere_and_prints_the_before_after_table(
    small_demo_data, tmp_path
):
    env = {"FUNRL_DEMO_DATA": str(small_demo_data.root.with_name("demo"))}  # the small build: .../demo-small
    out, elsewhere, steps = tmp_path / "run", tmp_path / "elsewhere", 4
    elsewhere.mkdir()
    # run.out_dir relative to the first run's working directory; the resume runs from another one
    args = ["--demo-size", "small", "run.out_dir=run", f"run.steps={steps}", "run.save_every=1"]
    proc = run_train(args, env_extra=env, cwd=tmp_path, demo=True)
    wait_for(out / "checkpoints" / "step_000002" / "COMPLETE", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    assert len(jsonl(out / "metrics.jsonl")) < steps, "the run finished before it was killed: no resume tested"

    resumed = run_train(["--resume", str(out)], env_extra=env, cwd=elsewhere, demo=True)
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log[-4000:]
    assert "resumed from" in log
    table = log[log.rindex("\nmetric ") :]  # the table's header line
    for row in TABLE_ROWS:
        assert row in table, table
    assert "before" in table and "after" in table and "rel. change" in table
    fields = set(EvalReport.__dataclass_fields__)
    for name in ("eval_before.json", "eval_after.json"):
        report = json.loads((out / name).read_text())
        assert fields <= set(report) and report["num_clips"] > 0 and report["num_noise_clips"] > 0
    assert [m["step"] for m in jsonl(out / "metrics.jsonl")] == list(range(1, steps + 1))
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts[-1] == f"step_{steps:06d}" and not any(n.startswith(".tmp") for n in ckpts)
    assert (out / "model" / "config.json").is_file()
    config = (out / "config.yaml").read_text()
    assert "funrl/demo/assets/start_model" in config and str(small_demo_data.root) in config
    assert "train_encoder: false" in config  # the recipe trains the LLM alone on the frozen Whisper encoder
    assert list(elsewhere.iterdir()) == []  # nothing of the run went to the resuming process's directory
