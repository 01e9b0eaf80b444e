"""The SLAM-ASR model's three commands as README "Training a real audio-LLM" gives them, at CI size (the same code
path: `--size tiny` keeps Whisper tiny.en's encoder and SmolLM2's tokenizer, the LLM is a random 2-layer Llama):
build, SFT of the adapter + LoRA with funrl/recipes/slam_asr_sft.yaml, GRPO with LoRA with
funrl/recipes/slam_asr_grpo.yaml; then the run exports with `python -m funrl.export` and the exported folder
decodes in `python -m funrl.eval`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_runs import ROOT, jsonl, run_train

from funrl.sft_embed_ctc import HEAD_FILE

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]


def _run(args: list[str], timeout: int = 600) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout + proc.stderr


def _trainable_params(model: Path, lora_r: int) -> int:
    """The adapter's two Linear layers, plus LoRA on q/k/v/o of every LLM layer: r * (fan_in + fan_out) each."""
    a = json.loads((model / "config.json").read_text())
    stacked, hidden = a["encoder"]["d_model"] * a["adapter"]["splice"], a["adapter"]["hidden_size"]
    adapter = (stacked + 1) * hidden + (hidden + 1) * a["adapter"]["llm_hidden_size"]
    c = json.loads((model / "llm" / "config.json").read_text())
    d, hd = c["hidden_size"], c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    return adapter + c["num_hidden_layers"] * lora_r * ((d + q) + 2 * (d + kv) + (q + d))


def _sft_args(start: Path, out: Path, data, tmp_path: Path) -> list[str]:
    """The SFT recipe at CI size, from model folder ``start`` into ``out``."""
    return (
        ["-m", "funrl.sft", "--config", "funrl/recipes/slam_asr_sft.yaml", f"model.path={start}"]
        + [f"data.train_manifest={data.manifest('sft_train')}", f"run.out_dir={out}"]
        + ["optim.steps=2", "optim.minutes=0", "optim.warmup_steps=1", "optim.batch_size=4", "run.eval_every=0"]
        + [f"data.dev_manifest={data.manifest('dev')}", "data.dev_clips=4", "run.max_new_tokens=8"]
        + ["data.silence_clips=2", "data.broad_clips=2", f"data.broad_dir={tmp_path / 'broad'}"]  # at CI size
    )


def _same_model(a_dir: Path, b_dir: Path) -> None:
    """Both model folders hold the same tensors, bit for bit, and the same embedding-CTC blank."""
    for part in ("frontend.safetensors", "llm/model.safetensors"):
        a, b = load_file(str(a_dir / part)), load_file(str(b_dir / part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    a, b = load_file(str(a_dir / HEAD_FILE)), load_file(str(b_dir / HEAD_FILE))
    assert torch.equal(a["blank"], b["blank"]) and torch.equal(a["tokens"], b["tokens"])


def test_build_sft_grpo_export_and_eval_of_the_slam_asr_model_at_ci_size(small_demo_data, tmp_path):
    built, sft, grpo = tmp_path / "slam_asr", tmp_path / "sft", tmp_path / "grpo"
    _run(["scripts/build_slam_asr.py", str(built), "--size", "tiny"])

    log = _run(_sft_args(built, sft, small_demo_data, tmp_path))
    assert " + 2 room-tone clips" in log and "+ 2 broad-vocabulary clips" in log
    assert f"model.train=adapter_lora: {_trainable_params(built, lora_r=8) / 1e6:.2f} M trainable parameters" in log
    assert jsonl(sft / "train_log.jsonl")[-1]["ctc"] > 0  # the recipe's embedding-space CTC is in the loss
    before = load_file(str(built / "frontend.safetensors"))
    after = load_file(str(sft / "model" / "frontend.safetensors"))
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("adapter.") for k in moved)  # the Whisper encoder stays as it was
    llm_before = load_file(str(built / "llm" / "model.safetensors"))
    llm_after = load_file(str(sft / "model" / "llm" / "model.safetensors"))
    assert llm_before.keys() == llm_after.keys()  # the LoRA is merged: a plain LLM folder again
    moved = {k for k in llm_before if not torch.equal(llm_before[k], llm_after[k])}
    assert moved and all(k.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj", "o_proj") for k in moved), moved

    # shipped as the 3.5 M trained tensors, the SFT model rebuilds on the built one bit for bit
    asset, unpacked = tmp_path / "asset", tmp_path / "unpacked"
    _run(["scripts/ship_slam_sft.py", "pack", str(sft), "--to", str(asset)])
    _run(["scripts/ship_slam_sft.py", "unpack", str(built), str(unpacked), "--from", str(asset)])
    _same_model(sft / "model", unpacked)
    # an SFT continued from the unpacked model ships as a chain on that asset, and rebuilds bit for bit too
    sft2, asset2, unpacked2 = tmp_path / "sft2", tmp_path / "asset2", tmp_path / "unpacked2"
    _run(_sft_args(unpacked, sft2, small_demo_data, tmp_path))
    _run(["scripts/ship_slam_sft.py", "pack", str(sft2), "--to", str(asset2), "--on", str(asset)])
    assert (asset2 / "base" / "trained.safetensors").read_bytes() == (asset / "trained.safetensors").read_bytes()
    _run(["scripts/ship_slam_sft.py", "unpack", str(built), str(unpacked2), "--from", str(asset2)])
    _same_model(sft2 / "model", unpacked2)
    assert not torch.equal(
        *(load_file(str(d / "frontend.safetensors"))["adapter.fc1.weight"] for d in (sft2 / "model", unpacked))
    )

    args = ["--config", str(ROOT / "funrl/recipes/slam_asr_grpo.yaml"), f"model.path={sft / 'model'}"]
    args += [f"data.train_manifest={small_demo_data.manifest('rl_train')}", "data.test_manifest=", "data.demo_dir="]
    args += [f"run.out_dir={grpo}", "learner.lr=1e-2"]  # a LoRA step 2's log-probs can see
    args += ["run.steps=2", "run.clips_per_step=4", "data.noise_per_step=1", "rollout.n=4", "rollout.max_new_tokens=8"]
    args += ["rollout.kv_cache_memory_bytes=33554432", "run.save_every=1", "ray.num_cpus=3"]
    proc = run_train(args)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log[-3000:]
    metrics = jsonl(grpo / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    # step 2 samples from the LoRA step 1 trained, merged into full weights (rollout.lora_sync: merged): the
    # engine's log-probs agree with the learner's, on SmolLM2's vocabulary, in fp32
    assert all(m["rollout.logprob_diff.max"] < 1e-4 for m in metrics)
    assert metrics[1]["kl"] > 1e-4 and not (grpo / "rollout_lora").exists()

    exported = tmp_path / "exported"
    _run(["-m", "funrl.export", str(grpo), "--out", str(exported)])
    report = tmp_path / "eval.json"
    _run(
        ["-m", "funrl.eval", "--model", str(exported), "--manifest", str(small_demo_data.manifest("test"))]
        + ["--out", str(report), "--max-new-tokens", "8", "--no-progress"]
    )
    result = json.loads(report.read_text())
    assert result["num_clips"] > 0 and result["num_noise_clips"] > 0
