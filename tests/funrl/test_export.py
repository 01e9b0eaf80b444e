"""``python -m funrl.export``: a run folder written by a 1-rank learner (config.yaml + checkpoints/step_N with
the learner's DCP checkpoint) -> a plain model folder equal to what the learner itself saves (`save_model`);
the LLM-only folder; a chosen step; one-line errors with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from funrl.checkpoint import COMPLETE, CheckpointManager
from funrl.config import LearnerConfig, LoraConfig, ModelConfig, RunConfig, TrainConfig, save_config
from funrl.export import main
from policy.distributed import free_port
from policy.grpo import group_advantages
from policy.messages import Clip, PromptBatch, RolloutBatch, ScoredRollout
from policy.models import load_audio_llm

ROOT = Path(__file__).resolve().parents[2]
HIDDEN, VOCAB = 128, 843  # the tiny encoder_adapter_llm of tests/conftest.py


def scored_batch(seed: int, B: int = 2, G: int = 3, T: int = 5) -> ScoredRollout:
    g = torch.Generator().manual_seed(seed)
    clips = tuple(Clip(audio=f"/nowhere/{i}.wav", text="x") for i in range(B))
    embeds = tuple(torch.randn(4 + i, HIDDEN, generator=g) for i in range(B))
    mask = (torch.arange(T) < torch.randint(1, T + 1, (B, G, 1), generator=g)).float()
    ids = torch.randint(0, VOCAB, (B, G, T), generator=g) * mask.long()
    rollout = RolloutBatch(
        PromptBatch(clips, embeds), ids, mask, torch.zeros(B, G, T), tuple(("h",) * G for _ in range(B))
    )
    rewards = torch.rand(B, G, generator=g)
    return ScoredRollout(rollout, {"total": rewards}, group_advantages(rewards))


def make_run(model_dir: Path, run_dir: Path, finetune: str) -> dict[int, Path]:
    """A run folder with checkpoints after update 1 and 2; returns {step: the learner's own save_model}."""
    from policy.learner import Learner

    lcfg = LearnerConfig(
        lr=1e-3, micro_batch=4, finetune=finetune, lora=LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj"))
    )
    cfg = TrainConfig(model=ModelConfig(path=str(model_dir)), learner=lcfg, run=RunConfig(out_dir=str(run_dir)))
    save_config(cfg, run_dir / "config.yaml")
    manager = CheckpointManager(run_dir, keep_last=3)
    learner = Learner(str(model_dir), cfg.model, lcfg, 0, 1, "127.0.0.1", free_port(), total_steps=cfg.run.steps)
    learner.setup()
    direct = {}
    try:
        for step in (1, 2):
            learner.update(scored_batch(step))
            manager.save(step, {"data": {}}, lambda tmp: learner.save_checkpoint(str(tmp / "learner")))
            direct[step] = Path(learner.save_model(str(run_dir.parent / f"{run_dir.name}_direct_{step}")))
    finally:
        learner.shutdown()
    return direct


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "full"
    return run, make_run(tiny_model_dir, run, "full")


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "lora"
    return run, make_run(tiny_model_dir, run, "lora")


def state(folder) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in load_audio_llm(folder).state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.mark.slow
def test_cli_exports_the_latest_checkpoint_equal_to_the_learners_own_save(full_run, tiny_model_dir, tmp_path):
    run, direct = full_run
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    res = subprocess.run(
        [sys.executable, "-m", "funrl.export", str(run), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "step_000002" in res.stderr and "wrote the model" in res.stderr
    got = state(tmp_path / "out")
    assert max_diff(got, state(direct[2])) == 0.0
    assert max_diff(got, state(tiny_model_dir)) > 1e-4  # trained weights, not the starting ones
    assert max_diff(got, state(direct[1])) > 1e-6  # the latest step, not the first


@pytest.mark.slow
def test_step_option_picks_that_checkpoint(full_run, tmp_path):
    run, direct = full_run
    assert main([str(run), "--out", str(tmp_path / "s1"), "--step", "1"]) == 0
    assert max_diff(state(tmp_path / "s1"), state(direct[1])) == 0.0


@pytest.mark.slow
def test_lora_run_exports_the_merged_model_and_the_llm_alone(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    run, direct = lora_run
    assert main([str(run), "--out", str(tmp_path / "m")]) == 0
    want = state(direct[2])
    assert max_diff(state(tmp_path / "m"), want) == 0.0
    assert main([str(run), "--out", str(tmp_path / "llm"), "--llm-only"]) == 0
    llm = AutoModelForCausalLM.from_pretrained(tmp_path / "llm", local_files_only=True)
    got = {f"llm.{k}": v.detach().numpy() for k, v in llm.state_dict().items()}
    assert max_diff(got, {k: v for k, v in want.items() if k.startswith("llm.")}) == 0.0


@pytest.mark.slow
def test_bfloat16_export_halves_the_weights(full_run, tmp_path):
    run, direct = full_run
    assert main([str(run), "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    model = load_audio_llm(tmp_path / "bf16", dtype="bfloat16")
    want = state(direct[2])
    got = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    assert max_diff(got, want) < 2e-2
    assert (tmp_path / "bf16" / "llm" / "model.safetensors").stat().st_size < 0.6 * (
        direct[2] / "llm" / "model.safetensors"
    ).stat().st_size


def _error(capsys, *argv) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_2(full_run, tmp_path, capsys):
    run, _ = full_run
    out = tmp_path / "out"
    assert "is not a folder" in _error(capsys, tmp_path / "nowhere", "--out", out)
    assert "config.yaml is missing" in _error(capsys, tmp_path, "--out", out)
    assert "no checkpoint for step 7; complete checkpoints: 1, 2" in _error(capsys, run, "--out", out, "--step", 7)
    (out / "x").mkdir(parents=True)
    assert "not an empty folder" in _error(capsys, run, "--out", out)
    # a run with no checkpoint, only a half-written one
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text((run / "config.yaml").read_text())
    (empty / "checkpoints" / ".tmp-step_000003-99").mkdir(parents=True)
    assert "no complete checkpoint" in _error(capsys, empty, "--out", tmp_path / "o2")
    # a step folder without its COMPLETE marker, and a complete one whose learner/ lost its DCP shards
    (empty / "checkpoints" / "step_000003").mkdir()
    assert "incomplete checkpoint (no COMPLETE" in _error(capsys, empty, "--out", tmp_path / "o2", "--step", 3)
    bad = empty / "checkpoints" / "step_000004"
    (bad / "learner").mkdir(parents=True)
    (bad / "trainer_state.json").write_text("{}")
    (bad / COMPLETE).write_text("ok\n")
    assert "incomplete learner checkpoint" in _error(capsys, empty, "--out", tmp_path / "o2")
    assert not (tmp_path / "o2").exists()


def test_help_explains_the_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for words in ("RUN_DIR", "--out", "--step", "--llm-only", "--dtype", "latest", "vllm serve"):
        assert words in text
