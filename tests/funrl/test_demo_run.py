"""The built-in demo path (`python -m funrl.train` with no config) at reduced size, as a new user runs it:
the demo data (the session's build of it, reused as the demo reuses its own: building it is pinned in
test_demo.py), the shipped starting model, eval before, GRPO steps, eval after, the before/after table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from funrl.eval import EvalReport

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
TABLE_ROWS = ("WER", "CER (zh)", "keyword recall", "hallucination rate (noise clips)", "language mismatch rate")


def test_small_demo_runs_end_to_end_and_prints_the_before_after_table(small_demo_data, tmp_path):
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        RAY_AUTH_MODE="disabled",
        FUNRL_DEMO_DATA=str(small_demo_data.root.with_name("demo")),  # the small build: ROOT/demo-small
    )
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "funrl.train", "--demo-size", "small", f"run.out_dir={out}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    table = proc.stdout[proc.stdout.index("metric") :]
    for row in TABLE_ROWS:
        assert row in table, table
    assert "before" in table and "after" in table and "rel. change" in table
    fields = set(EvalReport.__dataclass_fields__)
    for name in ("eval_before.json", "eval_after.json"):
        report = json.loads((out / name).read_text())
        assert fields <= set(report) and report["num_clips"] > 0 and report["num_noise_clips"] > 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert (out / "model" / "config.json").is_file() and (out / "config.yaml").is_file()
    config = (out / "config.yaml").read_text()
    assert "funrl/demo/assets/start_model" in config and str(small_demo_data.root) in config
