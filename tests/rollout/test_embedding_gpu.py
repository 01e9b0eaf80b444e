"""An embedding worker given a GPU (``rollout.gpus_per_embedder`` > 0 puts its frontend on ``cuda``): the prompts it
builds equal the CPU worker's up to float32 kernel differences. Skipped without CUDA; not run in CI
(scripts/gpu_check.sh runs it)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from policy.config import ModelConfig
from policy.messages import Clip
from policy.models import get_adapter
from rollout.embedding import AudioEmbeddingWorker

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_a_worker_on_cuda_builds_the_cpu_workers_prompts(tmp_path):
    model = get_adapter("encoder_adapter_llm").build_tiny(tmp_path / "tiny", llm="qwen2", seed=0)
    rng = np.random.default_rng(0)
    clips = []
    for i, seconds in enumerate((0.7, 1.9)):
        sf.write(tmp_path / f"c{i}.wav", (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
        clips.append(Clip(str(tmp_path / f"c{i}.wav"), "text", "en", context="walrus" if i else None))
    cpu = AudioEmbeddingWorker(ModelConfig(path=str(model))).embed(clips)
    gpu_worker = AudioEmbeddingWorker(ModelConfig(path=str(model)), device="cuda")
    assert next(gpu_worker.model.parameters()).is_cuda
    gpu = gpu_worker.embed(clips)
    for a, b in zip(cpu.prompt_embeds, gpu.prompt_embeds, strict=True):
        assert b.device.type == "cpu" and b.shape == a.shape  # handed on as CPU tensors
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)  # TF32 / kernel differences only
