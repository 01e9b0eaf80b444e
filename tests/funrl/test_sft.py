"""funrl.sft: the CLI at reduced size (the shipped recipe), config errors, the loss by hand, decoding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from funrl.data import load_manifest
from funrl.sft import ctc_blank_id, lr_factor, main, sft_loss
from funrl.sft_config import SftOptimConfig
from funrl.sft_data import load_clips
from funrl.sft_eval import greedy_decode
from policy.models import load_audio_llm
from policy.models.prompt import prompt_token_ids

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def demo_small(small_demo_data):
    return small_demo_data  # the session's small build (tests/conftest.py), read-only


def test_cli_reduced_recipe_writes_a_loadable_model(demo_small, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "funrl.sft",
        "--config",
        str(REPO / "funrl/demo/sft.yaml"),
        f"data.demo_dir={demo_small.root}",
        "data.demo_size=small",
        "model.size=tiny",
        "optim.steps=30",
        "optim.minutes=0",
        "optim.warmup_steps=3",
        "optim.batch_size=8",
        "data.curriculum_steps=5",
        "optim.encoder_steps=10",
        "run.eval_every=15",
        "run.log_every=5",
        "run.max_new_tokens=16",
        f"run.out_dir={out}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 15, 20, 25, 30]
    encoder_phase, llm_phase = log[:2], log[2:]  # CTC alone, then CE over the frozen encoder
    assert all("ce" not in r and r["loss"] == r["ctc"] for r in encoder_phase)
    assert encoder_phase[1]["ctc"] < encoder_phase[0]["ctc"] and llm_phase[-1]["ce"] < 0.8 * llm_phase[0]["ce"]
    assert all(k in log[-1] for k in ("loss", "ce", "ctc", "lr", "elapsed_s"))
    assert "CTC word cuts" in proc.stderr
    evaluated = [r for r in log if "dev_wer" in r]
    assert [r["step"] for r in evaluated] == [15, 30] and 0.0 <= evaluated[-1]["dev_noise_nonempty"] <= 1.0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optim"]["steps"] == 30 and saved["model"]["size"] == "tiny" and saved["optim"]["ctc_weight"] == 0.5
    easy = load_manifest(out / "curriculum.jsonl")  # the demo's clean English sft_train clips
    train = {c.audio: c for c in load_manifest(demo_small.sft_train)}
    assert 0 < len(easy) < len(train) and all(c.audio in train and c.lang == "en" for c in easy)
    model = load_audio_llm(out / "model")
    assert model.frontend.ctc is not None and float(model.frontend.cmvn_istd.std()) > 0  # CMVN set from data


@pytest.mark.parametrize(
    "args,key", [(["optim.lrr=1e-3"], "optim.lrr"), (["data.train_manifest=x", "run.eval_evry=5"], "run.eval_evry")]
)
def test_config_typo_exits_2_naming_the_key(args, key, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert key in err and "did you mean" in err


def test_config_file_typo_names_file_line_and_key(tmp_path, capsys):
    path = tmp_path / "sft.yaml"
    path.write_text("data:\n  train_manifest: a.jsonl\noptim:\n  ctc_wieght: 0.3\n")
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4" in err and "optim.ctc_wieght" in err and "optim.ctc_weight" in err


def test_curriculum_needs_a_manifest(capsys):
    assert main(["data.train_manifest=a.jsonl", "data.curriculum_steps=10"]) == 2
    assert "data.curriculum_steps" in capsys.readouterr().err


def test_adapter_only_training_with_a_ctc_loss_is_refused_naming_model_train(capsys):
    assert main(["data.train_manifest=a.jsonl", "model.train=adapter", "optim.ctc_weight=0.5"]) == 2
    err = capsys.readouterr().err
    assert "model.train=adapter keeps the encoder frozen" in err and "optim.ctc_weight=0" in err
    assert main(["data.train_manifest=a.jsonl", "model.train=everything"]) == 2
    assert "model.train" in capsys.readouterr().err


def test_missing_manifest_exits_2(tmp_path, capsys):
    assert main([f"data.train_manifest={tmp_path / 'none.jsonl'}", f"run.out_dir={tmp_path / 'o'}"]) == 2
    assert "none.jsonl" in capsys.readouterr().err


def test_sft_loss_equals_hand_computed_ce_plus_ctc(tiny_model_dir, demo_small):
    model = load_audio_llm(tiny_model_dir)
    model.train()
    clips, waves = load_clips(str(demo_small.sft_train), 30.0, speech_only=True)
    clip = next(c for c in clips if c.context)  # a clip whose prompt holds context
    wave = waves[clips.index(clip)]
    feats = model.audio_features([wave])
    loss, ce, ctc = sft_loss(model, feats, [clip.text], [clip.context], ctc_weight=0.5)

    tok = model.tokenizer
    text_ids = tok(clip.text, add_special_tokens=False)["input_ids"]
    target = torch.tensor(text_ids + [tok.convert_tokens_to_ids("<|im_end|>")])
    ids = prompt_token_ids(tok, model.template, clip.context)
    emb = model.llm.get_input_embeddings()
    with torch.no_grad():
        audio = model.frontend(feats)[0]
        seq = torch.cat([emb(torch.tensor(ids.prefix)), audio, emb(torch.tensor(ids.suffix)), emb(target[:-1])])
        logits = model.llm(inputs_embeds=seq[None]).logits[0]
        n_prompt = len(ids.prefix) + audio.shape[0] + len(ids.suffix)
        ce_hand = F.cross_entropy(logits[n_prompt - 1 : n_prompt - 1 + len(target)], target)
        ctc_logits, lengths = model.frontend.ctc_logits(feats)
        ctc_hand = F.ctc_loss(
            ctc_logits.log_softmax(-1).transpose(0, 1),
            torch.tensor(text_ids),
            lengths,
            torch.tensor([len(text_ids)]),
            blank=tok.pad_token_id,
            reduction="mean",
        )
    assert ctc_blank_id(tok) == tok.pad_token_id
    assert ce == pytest.approx(float(ce_hand), abs=1e-4) and ctc == pytest.approx(float(ctc_hand), abs=1e-4)
    assert float(loss.detach()) == pytest.approx(float(ce_hand + 0.5 * ctc_hand), abs=1e-4)
    loss.backward()
    assert model.frontend.ctc.weight.grad.abs().sum() > 0 and model.frontend.adapter.fc1.weight.grad.abs().sum() > 0
    ce_only, _, ctc0 = sft_loss(model, feats, [clip.text], [clip.context], ctc_weight=0.0)
    assert ctc0 == 0.0 and float(ce_only.detach()) == pytest.approx(float(ce_hand), abs=1e-4)


def test_bf16_autocast_loss_tracks_fp32_and_keeps_fp32_gradients(tiny_model_dir, demo_small):
    """optim.autocast=bf16 runs the loss under torch.autocast: close to the fp32 loss, fp32 weights and grads."""
    model = load_audio_llm(tiny_model_dir)
    model.train()
    clips, waves = load_clips(str(demo_small.sft_train), 30.0, speech_only=True)
    texts, contexts = [c.text for c in clips[:4]], [c.context for c in clips[:4]]
    feats = model.audio_features(waves[:4])
    ref, ce_ref, ctc_ref = sft_loss(model, feats, texts, contexts, ctc_weight=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, ce, ctc = sft_loss(model, feats, texts, contexts, ctc_weight=0.5)
    assert loss.dtype == torch.float32  # log-softmax and the CTC run in fp32 under autocast
    assert ce == pytest.approx(ce_ref, rel=0.02) and ctc == pytest.approx(ctc_ref, rel=0.02)
    assert ce != ce_ref  # bf16 matmuls did run: a disabled autocast would match exactly
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="autocast"):
        SftOptimConfig(autocast="fp16")


def test_noise_clip_target_is_eos_alone(tiny_model_dir, demo_small):
    """data.noise_clips: an empty transcript trains -log p(EOS | prompt); its CTC target is empty (finite)."""
    model = load_audio_llm(tiny_model_dir)
    clips, waves = load_clips(str(demo_small.manifest("rl_train")), 30.0, speech_only=False)
    i = next(k for k, c in enumerate(clips) if not c.text)
    feats = model.audio_features([waves[i]])
    loss, ce, ctc = sft_loss(model, feats, [""], [clips[i].context], ctc_weight=0.5)
    ids = prompt_token_ids(model.tokenizer, model.template, clips[i].context)
    emb = model.llm.get_input_embeddings()
    with torch.no_grad():
        audio = model.frontend(feats)[0]
        seq = torch.cat([emb(torch.tensor(ids.prefix)), audio, emb(torch.tensor(ids.suffix))])
        last = model.llm(inputs_embeds=seq[None]).logits[0, -1].log_softmax(-1)
    assert ce == pytest.approx(-float(last[model.eos_token_ids[0]]), abs=1e-4)
    assert np.isfinite(ctc) and torch.isfinite(loss)


def test_greedy_decode_batched_equals_one_by_one(tiny_model_dir, demo_small):
    model = load_audio_llm(tiny_model_dir)
    clips, waves = load_clips(str(demo_small.dev), 30.0, speech_only=False)
    clips, waves = clips[:5], waves[:5]
    ctx = [c.context for c in clips]
    batched = greedy_decode(model, waves, ctx, max_new_tokens=8, batch_size=5)
    single = [greedy_decode(model, [w], [c], max_new_tokens=8, batch_size=1)[0] for w, c in zip(waves, ctx)]
    assert batched == single and len(batched) == 5


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = SftOptimConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 0.0, cfg) == pytest.approx(0.1) and lr_factor(9, 0.0, cfg) == pytest.approx(1.0)
    values = [lr_factor(10, p, cfg) for p in np.linspace(0, 1, 11)]
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_factor(50, 0.5, SftOptimConfig(schedule="constant", warmup_steps=0)) == 1.0


def test_concat_pairs_joins_english_clips_only():
    from funrl.sft import concat_pairs
    from policy.messages import Clip

    clips = [Clip("a.wav", "one two", "en", context="kw"), Clip("b.wav", "三四", "zh"), Clip("c.wav", "five", "en")]
    audio = {id(c): np.full(10 * (i + 1), i, dtype=np.float32) for i, c in enumerate(clips)}
    rng = np.random.default_rng(0)
    waves, texts, contexts = concat_pairs(clips, audio, clips, 1.0, rng)
    assert texts[1] == "三四" and len(waves[1]) == 20 and contexts[1] is None
    for i in (0, 2):
        first, second = clips[i], next(c for c in clips if texts[i] == f"{clips[i].text} {c.text}")
        assert second.lang == "en" and len(waves[i]) == len(audio[id(first)]) + len(audio[id(second)])
        assert contexts[i] == ", ".join(x for x in (first.context, second.context) if x)
    same = concat_pairs(clips, audio, clips, 0.0, rng)
    assert same[1] == [c.text for c in clips] and same[2] == [c.context for c in clips]


def test_ctc_align_first_frames_and_infeasible():
    from funrl.sft_augment import ctc_align

    frames = [1, 1, 0, 2, 0, 2, 0]  # blank = 0: best path emits 1 @0, 2 @3, 2 @5
    lp = np.full((len(frames), 3), -10.0)
    lp[np.arange(len(frames)), frames] = 0.0
    assert ctc_align(lp, [1, 2, 2], blank=0) == [0, 3, 5]
    assert ctc_align(np.zeros((2, 3)), [1, 1], blank=0) is None  # a repeat needs a blank between: 3 frames


def test_shuffle_words_keeps_audio_and_words_together():
    from funrl.sft_augment import shuffle_words

    wave = np.concatenate([np.full(5, 1.0), np.full(7, 2.0), np.full(3, 3.0)]).astype(np.float32)
    out, text = shuffle_words(wave, "one two three", [5, 12], np.random.default_rng(1))
    value = {"one": 1.0, "two": 2.0, "three": 3.0}
    assert sorted(text.split()) == ["one", "three", "two"] and len(out) == len(wave)
    assert [float(v) for v in dict.fromkeys(out.tolist())] == [value[w] for w in text.split()]


def test_new_model_on_a_pretrained_whisper_encoder_holds_its_weights_and_no_cmvn():
    from funrl.sft_config import load_sft_config
    from funrl.sft_model import build_model
    from policy.models.slam_asr import default_whisper_source
    from policy.models.whisper_convert import load_whisper_source

    overrides = ["data.train_manifest=a.jsonl", "model.size=tiny", "model.encoder=whisper", "model.splice=4"]
    model = build_model(load_sft_config(None, overrides), [])  # no waves: a whisper encoder takes no CMVN statistics
    _, state, _ = load_whisper_source(default_whisper_source())
    own = model.frontend.encoder.whisper.state_dict()
    assert len(own) > 50
    for name, tensor in own.items():
        assert torch.equal(tensor, state[f"model.encoder.{name}"].float()), name
    assert not model.frontend.has_cmvn and model.frontend.ctc is not None  # model.ctc=true: a CTC head on top
    assert model.frontend.adapter.fc1.in_features == 4 * 384  # model.splice=4 frames of tiny.en's d_model
    # the LLM is the size's new one, redrawn from N(0, init_std)
    assert abs(float(model.llm.get_input_embeddings().weight.std()) - 0.02) < 0.002


def _whisper_recipe_run(demo_small, tmp_path, steps: int, *extra: str) -> tuple[Path, dict]:
    """funrl/demo/sft_whisper.yaml at CI size for ``steps`` steps (+ ``extra`` overrides): the run folder and
    Whisper tiny.en's own weights (``model.encoder.*``)."""
    from policy.models.slam_asr import default_whisper_source
    from policy.models.whisper_convert import load_whisper_source

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "funrl.sft", "--config", str(REPO / "funrl/demo/sft_whisper.yaml")]
    cmd += [f"data.demo_dir={demo_small.root}", "data.demo_size=small", "model.size=tiny", f"optim.steps={steps}"]
    cmd += ["optim.minutes=0", "optim.warmup_steps=1", "optim.batch_size=4", "optim.lr=3e-3", "run.eval_every=0"]
    cmd += ["run.log_every=3", "run.max_new_tokens=8", "data.dev_clips=4", f"run.out_dir={out}", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, load_whisper_source(default_whisper_source())[1]


def test_whisper_demo_recipe_keeps_the_pretrained_encoder_frozen_from_step_one(demo_small, tmp_path):
    out, state = _whisper_recipe_run(demo_small, tmp_path, 6)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 6] and log[-1]["ce"] < log[0]["ce"]
    model = load_audio_llm(out / "model")
    assert model.frontend.ctc is None and model.frontend.adapter.fc1.in_features == 4 * 384  # recipe: splice 4
    for name, tensor in model.frontend.encoder.whisper.state_dict().items():  # frozen: tiny.en's own weights
        assert torch.equal(tensor, state[f"model.encoder.{name}"].float()), name


def test_encoder_top_layers_train_through_the_cache_while_the_layers_below_stay_pretrained(demo_small, tmp_path):
    # the recipe freezes the encoder (but its last layer now) and caches the states below that layer
    out, state = _whisper_recipe_run(demo_small, tmp_path, 3, "model.encoder_top_layers=1")
    model = load_audio_llm(out / "model")
    last = len(model.frontend.encoder.whisper.layers) - 1
    for name, tensor in model.frontend.encoder.whisper.state_dict().items():
        trained = name.startswith((f"layers.{last}.", "layer_norm."))
        assert torch.equal(tensor, state[f"model.encoder.{name}"].float()) != trained, name
