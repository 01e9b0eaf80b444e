"""funrl.sft --resume: a killed SFT run continues from its last atomic checkpoint as if never stopped."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import funrl.sft as sft
from funrl.checkpoint import CheckpointManager
from funrl.sft_checkpoint import head_tensors
from funrl.sft_config import load_sft_config
from funrl.sft_embed_ctc import HEAD_FILE

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _overrides(demo, out: Path) -> list[str]:
    # every source of randomness and state: the encoder phase, the curriculum sampler, clip joining, SpecAugment,
    # dropout-free tiny model, AdamW, and the embedding-space CTC (whose candidates grow with joined clips)
    return [
        f"data.demo_dir={demo.root}",
        "data.demo_size=small",
        "data.dev_clips=4",
        "model.size=tiny",
        "optim.steps=6",
        "optim.minutes=0",
        "optim.warmup_steps=2",
        "optim.batch_size=4",
        "optim.encoder_steps=2",
        "optim.shuffle_words_prob=0",
        "optim.embed_ctc_weight=0.5",
        "data.curriculum_steps=3",
        "run.eval_every=0",
        "run.save_every=2",
        "run.log_every=1",
        "run.max_new_tokens=4",
        f"run.out_dir={out}",
    ]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


class Killed(Exception):
    pass


def test_resumed_sft_run_matches_an_uninterrupted_one(small_demo_data, tmp_path, monkeypatch):
    whole = sft.train(load_sft_config(str(REPO / "funrl/demo/sft.yaml"), _overrides(small_demo_data, tmp_path / "a")))

    cut = tmp_path / "b"
    cfg = load_sft_config(str(REPO / "funrl/demo/sft.yaml"), _overrides(small_demo_data, cut))
    real_step = sft._optimizer_step

    def dies_at_step_5(loss, opt, grad_clip, step, out):
        if step == 5:  # after step 4's checkpoint, before step 5 changes any weight
            raise Killed
        return real_step(loss, opt, grad_clip, step, out)

    monkeypatch.setattr(sft, "_optimizer_step", dies_at_step_5)
    with pytest.raises(Killed):
        sft.train(cfg)
    monkeypatch.setattr(sft, "_optimizer_step", real_step)
    assert [r["step"] for r in _log(cut)] == [1, 2, 3, 4]
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step_000004"]  # keep_last=1, atomic
    elapsed_at_4 = _log(cut)[-1]["elapsed_s"]
    with open(cut / "train_log.jsonl", "a") as f:
        f.write('{"step": 5, "loss"')  # the kill tore a line being written

    assert sft.main(["--resume", str(cut)]) == 0
    resumed = _log(cut)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert resumed[4]["elapsed_s"] >= elapsed_at_4  # the time-based schedule's clock goes on
    for a, b in zip(_log(whole), resumed):
        assert {k: v for k, v in a.items() if k != "elapsed_s"} == {k: v for k, v in b.items() if k != "elapsed_s"}
    final_a = load_file(str(whole / "checkpoints/step_000006/trained.safetensors"))
    final_b = load_file(str(cut / "checkpoints/step_000006/trained.safetensors"))
    assert final_a.keys() == final_b.keys() and any(k.startswith("frontend.encoder") for k in final_a)
    for name in final_a:  # same machine, same batches, same RNG draws: the same floats
        assert torch.equal(final_a[name], final_b[name]), name
    state = json.loads((cut / "checkpoints/step_000006/trainer_state.json").read_text())
    assert state["step"] == 6 and state["samplers"].keys() == {"train", "easy"}
    assert load_file(str(cut / "checkpoints/step_000006" / HEAD_FILE))["tokens"].numel()  # the CTC's candidates


def test_sft_start_and_resume_errors_name_the_folder_and_the_fix(small_demo_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = [*_overrides(small_demo_data, out), "optim.steps=2", "optim.encoder_steps=0", "data.curriculum_steps=0"]
    assert sft.main(["--config", str(REPO / "funrl/demo/sft.yaml"), *args]) == 0
    capsys.readouterr()

    assert sft.main(["--config", str(REPO / "funrl/demo/sft.yaml"), *args]) == 2  # would start over the run
    err = capsys.readouterr().err
    assert f"--resume {out}" in err and "run.out_dir" in err

    assert sft.main(["--resume", str(out), "model.size=demo"]) == 2  # a changed model is another run
    err = capsys.readouterr().err
    assert "model.size" in err and "'tiny'" in err

    assert sft.main(["--resume", str(out), f"run.out_dir={tmp_path / 'x'}"]) == 2
    assert "drop the run.out_dir override" in capsys.readouterr().err
    assert sft.main(["--resume", str(out), "--config", str(REPO / "funrl/demo/sft.yaml")]) == 2
    assert "drop --config" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert sft.main(["--resume", str(empty)]) == 2
    assert str(empty / "config.yaml") in capsys.readouterr().err

    state_file = out / "checkpoints/step_000002/trainer_state.json"  # a run from before data.silence_babble
    state = json.loads(state_file.read_text())
    del state["config"]["data"]["silence_babble"]
    state_file.write_text(json.dumps(state))
    link = tmp_path / "demo_link"  # the same data folder by another path is the same run
    link.symlink_to(small_demo_data.root, target_is_directory=True)
    assert sft.main(["--resume", str(out), "optim.steps=3", f"data.demo_dir={link}"]) == 0  # trained further
    assert [r["step"] for r in _log(out)] == [1, 2, 3]

    head_file = out / "checkpoints/step_000003" / HEAD_FILE  # a damaged head: the message points to an earlier one
    good_head = head_file.read_bytes()
    save_file({"blank": torch.zeros(3), "tokens": torch.tensor([0])}, str(head_file))
    assert sft.main(["--resume", str(out), "optim.steps=4"]) == 1
    assert f"{head_file}: not the embedding CTC" in (err := capsys.readouterr().err) and "earlier one" in err
    head_file.write_bytes(good_head)

    (out / "checkpoints/step_000003/COMPLETE").unlink()  # a torn checkpoint is never resumed from
    assert sft.main(["--resume", str(out)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_an_sft_started_from_a_saved_sft_model_continues_its_trained_ctc_blank(small_demo_data, tmp_path, capsys):
    first = tmp_path / "first"
    args = [*_overrides(small_demo_data, first), "optim.steps=2", "optim.encoder_steps=0", "data.curriculum_steps=0"]
    assert sft.main(["--config", str(REPO / "funrl/demo/sft.yaml"), *args]) == 0
    head = load_file(str(first / "model" / HEAD_FILE))
    ckpt_head = load_file(str(first / "checkpoints/step_000002" / HEAD_FILE))  # one format, model and checkpoint
    ckpt_blank, ckpt_tokens = ckpt_head["blank"], ckpt_head["tokens"].tolist()
    assert torch.equal(head["blank"], ckpt_blank) and head["tokens"].tolist() == ckpt_tokens
    ckpt = CheckpointManager(first).latest()  # a checkpoint of the old format (tokens in trainer_state.json) ...
    state = json.loads((ckpt.path / "trainer_state.json").read_text())
    (ckpt.path / "trainer_state.json").write_text(json.dumps({**state, "embed_ctc_tokens": ckpt_tokens}))
    save_file({"blank": ckpt_blank}, str(ckpt.path / HEAD_FILE))
    old = head_tensors(ckpt)  # ... reads as the new one
    assert torch.equal(old["blank"], ckpt_blank) and old["tokens"].tolist() == ckpt_tokens

    second = tmp_path / "second"
    cfg = load_sft_config(
        str(REPO / "funrl/demo/sft.yaml"), [*_overrides(small_demo_data, second), f"model.path={first / 'model'}"]
    )
    run, *_ = sft._start(cfg, second, None)
    assert torch.equal(run.embed_ctc.blank.detach(), ckpt_blank)  # not the fresh mean of the candidate rows
    assert set(ckpt_tokens) <= set(run.embed_ctc.tokens())
    assert f"embedding CTC continues from {first / 'model' / HEAD_FILE}" in capsys.readouterr().err

    (first / "model" / HEAD_FILE).write_bytes(b"not safetensors")
    cfg = replace(cfg, run=replace(cfg.run, out_dir=str(tmp_path / "third")))
    with pytest.raises(ValueError, match=f"{HEAD_FILE}: unreadable.*delete the file"):
        sft._start(cfg, tmp_path / "third", None)


def test_sigterm_ends_the_sft_step_in_progress_writes_its_checkpoint_and_resume_matches_an_uninterrupted_run(
    small_demo_data, tmp_path, monkeypatch, capsys
):
    import os
    import signal

    config = str(REPO / "funrl/demo/sft.yaml")
    whole = sft.train(load_sft_config(config, _overrides(small_demo_data, tmp_path / "a")))
    cut = tmp_path / "b"
    real_step = sft._optimizer_step

    def terminated_during_step_3(loss, opt, grad_clip, step, out):
        if step == 3:  # as a scheduler's preemption notice arrives mid-step
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(loss, opt, grad_clip, step, out)

    monkeypatch.setattr(sft, "_optimizer_step", terminated_during_step_3)
    before = signal.getsignal(signal.SIGTERM)  # another library's, in a process that ran other tests
    assert sft.main(["--config", config, *_overrides(small_demo_data, cut)]) == 143
    monkeypatch.setattr(sft, "_optimizer_step", real_step)
    assert signal.getsignal(signal.SIGTERM) is before  # the run's handler is gone with it
    assert f"python -m funrl.sft --resume {cut}" in capsys.readouterr().err
    assert [r["step"] for r in _log(cut)] == [1, 2, 3]
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step_000003"]  # save_every=2: the stop's

    assert sft.main(["--resume", str(cut)]) == 0
    assert [r["step"] for r in _log(cut)] == [1, 2, 3, 4, 5, 6]
    final_a = load_file(str(whole / "checkpoints/step_000006/trained.safetensors"))
    final_b = load_file(str(cut / "checkpoints/step_000006/trained.safetensors"))
    for name in final_a:
        assert torch.equal(final_a[name], final_b[name]), name
