"""rollout.vllm_worker.engine_kwargs and the engine-size checks of RolloutConfig (no engine started): every
keyword is one of vLLM's own EngineArgs fields, tensor parallelism reaches vLLM only with as many GPUs."""

import dataclasses

import pytest

from policy.config import ConfigError
from rollout.config import RolloutConfig
from rollout.vllm_worker import engine_kwargs


def _vllm_engine_fields() -> set[str]:
    from vllm.engine.arg_utils import EngineArgs

    return {f.name for f in dataclasses.fields(EngineArgs)}


def test_cpu_engine_sizes_its_kv_cache_in_bytes_and_runs_on_one_device():
    kw = engine_kwargs("/m", RolloutConfig(kv_cache_memory_bytes=1 << 20), "float32", False, False, 8)
    assert kw["kv_cache_memory_bytes"] == 1 << 20
    assert "tensor_parallel_size" not in kw and "gpu_memory_utilization" not in kw
    assert kw["enable_prompt_embeds"] is True and kw["enable_prefix_caching"] is False
    assert set(kw) - {"model"} <= _vllm_engine_fields()


def test_tensor_parallel_engine_gets_its_gpus_and_lora_cap():
    cfg = RolloutConfig(tensor_parallel_size=2, gpus_per_worker=2)
    kw = engine_kwargs("/m", cfg, "bfloat16", True, True, 12)
    assert kw["tensor_parallel_size"] == 2 and kw["gpu_memory_utilization"] == cfg.gpu_memory_utilization
    assert kw["enable_sleep_mode"] is True and kw["max_lora_rank"] == 16  # the next rank vLLM accepts
    assert set(kw) - {"model"} <= _vllm_engine_fields()


@pytest.mark.parametrize("gpus", [0, 1, 4])
def test_tensor_parallel_size_must_equal_the_gpus_per_engine(gpus):
    with pytest.raises(ConfigError, match="set rollout.gpus_per_worker=2") as err:
        RolloutConfig(tensor_parallel_size=2, gpus_per_worker=gpus)
    assert err.value.key == "rollout.tensor_parallel_size"
