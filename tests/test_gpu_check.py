"""scripts/gpu_check.sh and scripts/gpu_report.py on a machine without a GPU: the check stops with exit 2 naming
the missing device; the report turns a check folder (exit codes, JSON numbers, JUnit XML) into one JSON and one
Markdown table, and fails when a part failed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]


def _report_module():
    return load_script("gpu_report")


def _check_folder(folder: Path, learner_rc: str = "0") -> Path:
    folder.mkdir()
    (folder / "device.txt").write_text("gpu_check: NVIDIA H200, torch 2.11.0\n")
    (folder / "gpu_tests.rc").write_text("0\n")
    (folder / "gpu_tests.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="3" failures="0" errors="0" skipped="1"/></testsuites>'
    )
    (folder / "bench_gpu_learner.rc").write_text(learner_rc + "\n")
    (folder / "bench_gpu_learner.json").write_text(json.dumps({"size": "nano", "tokens_per_s": 12345.678, "mfu": 0.25}))
    (folder / "bench_sync.rc").write_text("skipped\n")
    return folder


def test_report_collects_statuses_numbers_and_test_counts_into_json_and_markdown(tmp_path, capsys):
    report = _report_module()
    folder = _check_folder(tmp_path / "check")
    assert report.main([str(folder)]) == 0
    data = json.loads((folder / "gpu_check.json").read_text())
    assert data["device"] == "gpu_check: NVIDIA H200, torch 2.11.0"
    assert data["parts"]["gpu_tests"] == {
        "status": "passed",
        "results": {"tests": 3, "failures": 0, "errors": 0, "skipped": 1, "passed": 2},
    }
    assert data["parts"]["bench_sync"] == {"status": "skipped"}
    table = (folder / "gpu_check.md").read_text()
    assert "| bench_gpu_learner | passed | size nano, tokens_per_s 1.235e+04, mfu 0.25 |" in table
    assert "| bench_sync | skipped | — |" in table and table in capsys.readouterr().out


@pytest.mark.parametrize("rc, status", [("1", "failed (exit 1)"), ("124", "timed out")])
def test_report_fails_when_a_part_failed_or_timed_out(tmp_path, rc, status):
    report = _report_module()
    folder = _check_folder(tmp_path / "check", learner_rc=rc)
    assert report.main([str(folder)]) == 1
    assert json.loads((folder / "gpu_check.json").read_text())["parts"]["bench_gpu_learner"]["status"] == status


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_gpu_check_without_cuda_exits_2_naming_the_missing_device(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stderr
