"""Shared pytest fixtures for the whole suite (keep this file small; document each fixture).

* ``tiny_model_dir`` — a tiny random ``encoder_adapter_llm`` checkpoint (Qwen2 LLM, ``scripts/make_tiny_model.py``
  layout) built once per session; treat it as read-only (copy it before changing it).
* ``tiny_model_dirs`` — ``{"qwen2": dir, "qwen3": dir, "llama": dir}``: one such checkpoint per LLM family.
* ``llm_family`` — parametrised over ``qwen2``, ``qwen3``, ``llama``; ``tiny_family_dir`` is that family's folder.
* ``qwen2_audio_dir`` — a tiny random Qwen2-Audio checkpoint (transformers layout), built once per session; read-only.
* ``slam_asr_tiny_dir`` — `scripts/build_slam_asr.py --size tiny`: Whisper tiny.en's encoder + a random adapter +
  a random 2-layer Llama with SmolLM2-135M's tokenizer, built once per session; read-only.
* ``small_demo_data`` — the built-in demo's speech data at the reduced (CI) size, built once per session.
* ``hub_cache`` — an empty Hugging Face Hub cache folder, set as ``HF_HUB_CACHE`` for the test; its
  ``.add(folder, repo_id, commit, refs=("main",))`` copies a model folder in as ``hf download`` lays it out
  (``models--ORG--NAME/blobs/<sha256>``, ``snapshots/<commit>/...`` relative symlinks, ``refs/<ref>``) and returns
  the snapshot folder (huggingface_hub has no offline call that adds to the cache).

How equivalence tolerances are chosen (they must hold on any x86 CPU, Intel or AMD, AVX2 or AVX-512, whose
float summation order differs): a bound follows from the dtype (float32: eps = 1.2e-7), the number of terms
accumulated and the magnitude compared, never from one machine's result.

* log-probs and losses (a few hundred float32 terms of magnitude <= ~10): 1e-5 absolute, about 100x the
  worst-case eps * terms * magnitude of these tiny models;
* weights after optimizer steps: compared as *updates* (`tests/tolerances.update_error`): the difference must
  stay below 1 % of the update's norm, per tensor (plus 4 eps of the weights' norm). Adam moves every weight by
  about lr whatever its gradient's size, so an element whose gradient is zero up to round-off (an attention
  key bias: softmax ignores it) moves by +-lr in a direction set by round-off, which differs between CPUs; an
  element-wise bound would have to be ~lr to hold everywhere and could not tell a right update from a wrong
  one. Measured: at most 0.2 % (encoder qkv bias). A wrong update direction (a missing micro-batch, a wrong
  advantage) is off by tens of %. Adam does not see a loss scale: the losses and gradient norms, compared
  alongside, catch those.
"""

from __future__ import annotations

import hashlib
import os
import shutil
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


@pytest.fixture(scope="session")
def qwen2_audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from policy.models import get_adapter

    return get_adapter("qwen2_audio").build_tiny(tmp_path_factory.mktemp("hf") / "qwen2_audio", seed=0)


@pytest.fixture(scope="session")
def slam_asr_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from policy.models.slam_asr import build_slam_asr

    return build_slam_asr(tmp_path_factory.mktemp("slam_asr") / "model", size="tiny", seed=0)


@pytest.fixture(scope="session")
def small_demo_data(tmp_path_factory: pytest.TempPathFactory):
    """The built-in demo's speech data at its reduced (CI) size, built once per session; read-only."""
    from funrl.demo.build import build_demo_data
    from funrl.demo.plan import DemoSizes

    # laid out as the demo's own small build is (`funrl.demo.run.demo_data_dir`): FUNRL_DEMO_DATA=ROOT/demo reuses it
    root = tmp_path_factory.mktemp("demo_data") / "demo-small"
    return build_demo_data(root, seed=0, sizes=DemoSizes.small(), progress=False)


@pytest.fixture(params=LLM_FAMILIES)
def llm_family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tiny_family_dir(tiny_model_dirs: dict[str, Path], llm_family: str) -> Path:
    return tiny_model_dirs[llm_family]


class HubCache(type(Path())):
    """A Hub cache folder (a Path) that model folders can be added to (the ``hub_cache`` fixture)."""

    def add(self, source: Path, repo_id: str, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
        repo = self / ("models--" + repo_id.replace("/", "--"))
        snapshot = repo / "snapshots" / commit
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        for path in sorted(p for p in Path(source).rglob("*") if p.is_file()):
            blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
            if not blob.exists():
                shutil.copyfile(path, blob)
            link = snapshot / path.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        for ref in refs:
            (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
            (repo / "refs" / ref).write_text(commit)
        return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubCache:
    cache = HubCache(tmp_path / "hf_hub_cache")
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache
