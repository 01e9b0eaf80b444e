"""scripts/bench_gpu_learner.py on CPU (issue 7 item 4): its FLOP count against torch's own count of the
matmuls, the peak-FLOP/s table, and a tiny end-to-end run (the script's smoke check). The GPU run is
tests/policy/test_learner_gpu.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from script_loader import load_script
from torch.utils.flop_counter import FlopCounterMode

from policy.models import load_audio_llm


def load_bench():
    return load_script("bench_gpu_learner")


bench = load_bench()


@pytest.fixture(scope="module")
def tiny_bench_dir(tmp_path_factory) -> Path:
    return bench.build_model(tmp_path_factory.mktemp("bench") / "tiny", "tiny")


def test_flop_formula_matches_torch_count_of_the_matmuls(tiny_bench_dir):
    shape = bench.llm_shape(tiny_bench_dir)
    model = load_audio_llm(tiny_bench_dir)
    rows, prompt_len, completion_len = 3, 10, 7
    prompts = [torch.randn(prompt_len, shape["hidden"]) for _ in range(rows)]
    ids = torch.randint(0, shape["vocab"], (rows, completion_len))
    with FlopCounterMode(display=False) as counter:
        model.sequence_logprobs(prompts, ids).sum().backward()
    want = bench.forward_flops(shape, rows, prompt_len, completion_len, attention=False)
    assert counter.get_total_flops() == pytest.approx(3 * want, rel=0.01)  # fwd + bwd = 3 fwd (norms: < 1 %)
    full = bench.update_flops(shape, rows, prompt_len, completion_len, ppo_epochs=1)
    assert full == bench.forward_flops(shape, rows, prompt_len, completion_len) * 4  # train 3 + reference 1
    assert bench.update_flops(shape, rows, prompt_len, completion_len, ppo_epochs=2) == full / 4 * 8
    assert bench.update_flops(shape, rows, prompt_len, completion_len, 1, trainable=0) == full / 4 * 3


def test_peak_flops_by_device_name(monkeypatch):
    cuda = torch.device("cuda", 0)
    for name, tflops in (
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H200", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("Some Other GPU", None),
    ):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        assert bench.peak_flops(cuda) == (None if tflops is None else tflops * 1e12)
    assert bench.peak_flops(torch.device("cpu")) is None
    assert bench.peak_flops(torch.device("cpu"), 2.5) == 2.5e12


@pytest.mark.slow
def test_cpu_smoke_run_prints_the_table(capsys):
    assert bench.main(["--device", "cpu", "--size", "tiny", "--steps", "1", "--peak-tflops", "1"]) == 0
    out = capsys.readouterr().out
    for words in (
        "| tokens/s (prompt + completion) |",
        "| MFU |",
        "| weight export fp32 (gather_weights) |",
        "learner.dtype=bfloat16",
        "peak RSS",
    ):
        assert words in out
    assert "n/a" not in out.split("| MFU |")[1].split("\n")[0]
