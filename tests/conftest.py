"""Shared pytest fixtures for the whole suite (keep this file small; document each fixture).

* ``tiny_model_dir`` — a tiny random ``encoder_adapter_llm`` checkpoint (Qwen2 LLM, ``scripts/make_tiny_model.py``
  layout) built once per session; treat it as read-only (copy it before changing it).
* ``tiny_model_dirs`` — ``{"qwen2": dir, "qwen3": dir, "llama": dir}``: one such checkpoint per LLM family.
* ``llm_family`` — parametrised over ``qwen2``, ``qwen3``, ``llama``; ``tiny_family_dir`` is that family's folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

LLM_FAMILIES = ("qwen2", "qwen3", "llama")


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from policy.models import get_adapter

    root = tmp_path_factory.mktemp("tiny_models")
    adapter = get_adapter("encoder_adapter_llm")
    return {fam: adapter.build_tiny(root / fam, llm=fam, seed=0) for fam in LLM_FAMILIES}


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["qwen2"]


@pytest.fixture(params=LLM_FAMILIES)
def llm_family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tiny_family_dir(tiny_model_dirs: dict[str, Path], llm_family: str) -> Path:
    return tiny_model_dirs[llm_family]
