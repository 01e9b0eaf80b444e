"""The learner on a CUDA GPU (issue 7 items 1 and 4): a 1-rank FSDP2 learner with ``learner.dtype=bfloat16``
(nccl, bf16 compute, fp32 master weights) at the bench script's ``small`` size, its agreement with the fp32
learner, and scripts/bench_gpu_learner.py's `measure` at that size. Skipped without CUDA; not run in CI.

    .venv/bin/python -m pytest -m gpu tests/policy/test_learner_gpu.py -s      # -s: prints the bench table

Only correctness is asserted here; the speed numbers go to BENCHMARKS.md (from the full-size script run).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_gpu_learner.py"
BATCH = dict(clips=4, group=4, prompt_len=64, completion_len=32)  # the bench's "small" batch


def _bench():
    if "bench_gpu_learner" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_gpu_learner", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["bench_gpu_learner"]


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    return _bench().build_model(tmp_path_factory.mktemp("gpu_bench") / "small", "small")


@contextmanager
def cuda_learner(model_dir: Path, dtype: str):
    from policy.config import LearnerConfig, ModelConfig
    from policy.distributed import free_port
    from policy.learner import Learner

    cfg = LearnerConfig(lr=1e-4, micro_batch=8, ppo_epochs=2, dtype=dtype, gpus_per_rank=1.0)
    learner = Learner(str(model_dir), ModelConfig(path=str(model_dir)), cfg, 0, 1, "127.0.0.1", free_port())
    learner.setup()
    try:
        yield learner
    finally:
        learner.shutdown()


def _run(model_dir: Path, dtype: str) -> dict:
    """Two updates on cuda: log-probs before, stats, dtypes of params / grads / AdamW state, weights, memory."""
    import torch.distributed as dist

    bench = _bench()
    shape = bench.llm_shape(model_dir)
    batches = [bench.make_batch(shape["vocab"], shape["hidden"], seed=s, **BATCH) for s in (1, 2)]
    torch.cuda.reset_peak_memory_stats()
    with cuda_learner(model_dir, dtype) as learner:
        backend = dist.get_backend()
        start = {k: v.numpy().copy() for k, v in learner.named_weights_for_sync()}
        logprobs = learner.logprobs(batches[0]).numpy()
        grads: set[torch.dtype] = set()
        hook = learner.optimizer.register_step_pre_hook(
            lambda opt, *_: grads.update(p.grad.dtype for g in opt.param_groups for p in g["params"])
        )
        stats = [learner.update(b) for b in batches]
        hook.remove()
        params = {(p.dtype, p.device.type) for p in learner.root.parameters()}
        state = {
            v.dtype
            for s in learner.optimizer.state.values()
            for v in s.values()
            if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0
        }
        end = {k: v.numpy().copy() for k, v in learner.named_weights_for_sync()}
        device = str(learner.device)
    return {
        "stats": stats,
        "logprobs": logprobs,
        "params": params,
        "grads": grads,
        "state": state,
        "moved": max(float(np.abs(end[k] - start[k]).max()) for k in start),
        "backend": backend,
        "device": device,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


@pytest.fixture(scope="module")
def runs(small_dir) -> dict:
    return {dtype: _run(small_dir, dtype) for dtype in ("float32", "bfloat16")}


def test_bf16_update_on_cuda_keeps_fp32_master_weights(runs, record_property):
    got = runs["bfloat16"]
    assert got["backend"] == "nccl" and got["device"].startswith("cuda")
    assert got["params"] == {(torch.float32, "cuda")}
    assert got["grads"] == {torch.float32} and got["state"] == {torch.float32}
    for s in got["stats"]:
        assert math.isfinite(s.loss) and math.isfinite(s.kl) and s.grad_norm > 0 and math.isfinite(s.grad_norm)
    assert got["moved"] > 1e-6  # gradients reached the weights and AdamW stepped them
    assert got["peak_gib"] > 0
    record_property("bf16_peak_gib", got["peak_gib"])
    print(
        f"\nbf16 1-rank learner, small model: peak GPU memory {got['peak_gib']:.3f} GiB "
        f"(fp32 learner: {runs['float32']['peak_gib']:.3f} GiB)"
    )


def test_bf16_loss_and_logprobs_close_to_fp32_on_cuda(runs):
    f32, b16 = runs["float32"], runs["bfloat16"]
    diff = np.abs(b16["logprobs"] - f32["logprobs"])
    assert diff.max() > 0  # bf16 compute really happened
    assert diff.max() < 0.05 * float(np.abs(f32["logprobs"]).max())
    for s32, s16 in zip(f32["stats"], b16["stats"]):
        assert s16.loss == pytest.approx(s32.loss, abs=0.02)
        assert s16.grad_norm == pytest.approx(s32.grad_norm, rel=0.1)
        assert s16.kl == pytest.approx(s32.kl, abs=0.005)


def test_bench_measure_on_cuda_reports_throughput_mfu_memory_and_export(small_dir):
    bench = _bench()
    cuda = torch.device("cuda", torch.cuda.current_device())
    peak = None if bench.peak_flops(cuda) else 100.0  # a GPU outside the table: any positive peak will do
    result = bench.measure(small_dir, device="cuda", micro_batch=8, warmup=1, steps=2, peak_tflops=peak, **BATCH)
    print("\n" + bench.markdown(result, "small"))
    assert result["device"].startswith("cuda") and result["dtype"] == "bfloat16"
    assert result["tokens_per_s"] > 0 and result["mfu"] is not None and result["mfu"] > 0
    assert result["peak_mem_gib"] > 0 and result["export_float32_s"] > 0
    assert result["export_float32_gb"] >= 4 * result["llm_params"] / 1e9  # fp32 LLM (a tied head: sent twice)
