"""`Learner.save_model` (issue 7 item 5): a 1-rank FSDP2 learner (gloo, in this process) starts from a model
folder the user has on disk — an encoder-adapter-LLM folder or a Qwen2-Audio-style transformers folder — does
one GRPO update and writes the model back in the same format. The written folder loads with `load_audio_llm`
(and, for Qwen2-Audio, with transformers' own class) and gives the learner's log-probs; its weights moved."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from learner_ranks import audio_batch, audio_prompts, learner_cfg, make_batch, one_rank_learner, rows, write_waves

from policy.models import get_adapter, load_audio_llm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def waves(tmp_path_factory) -> list[str]:
    return write_waves(tmp_path_factory.mktemp("save_model_audio"))


def _state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def _loaded_logprobs(model, batch, from_audio: bool) -> torch.Tensor:
    prompts, ids, mask, _ = rows(batch)
    if from_audio:
        prompts = audio_prompts(model, batch)
    with torch.no_grad():
        return model.sequence_logprobs(prompts, ids, mask).reshape(batch.rollout.token_ids.shape)


def test_encoder_adapter_llm_full_update_with_encoder_saves_a_folder_that_loads_and_agrees(
    tiny_model_dir, waves, tmp_path
):
    _full_update_with_encoder_saves_and_agrees(tiny_model_dir, waves, tmp_path)


def test_whisper_encoder_model_full_update_with_encoder_saves_a_folder_that_loads_and_agrees(waves, tmp_path):
    """The same with ``encoder.type: whisper``: FSDP2 trains the WhisperEncoder and the saved folder agrees."""
    model_dir = get_adapter("encoder_adapter_llm").build_tiny(tmp_path / "whisper", encoder="whisper")
    _full_update_with_encoder_saves_and_agrees(model_dir, waves, tmp_path)


def _full_update_with_encoder_saves_and_agrees(tiny_model_dir, waves, tmp_path):
    batch = audio_batch(1, waves)
    with one_rank_learner(tiny_model_dir, learner_cfg(ppo_epochs=1), train_encoder=True) as learner:
        learner.update(batch)
        want = learner.logprobs(batch)
        trained_frontend = {k: v.numpy().copy() for k, v in learner.named_frontend_weights_for_sync()}
        out = learner.save_model(str(tmp_path / "rl"))
    assert Path(out) == tmp_path / "rl"
    assert sorted(p.name for p in Path(out).iterdir()) == ["config.json", "frontend.safetensors", "llm"]
    assert json.loads((Path(out) / "config.json").read_text())["model_type"] == "encoder_adapter_llm"
    saved, start = load_audio_llm(out), load_audio_llm(tiny_model_dir)
    got = _loaded_logprobs(saved, batch, from_audio=True)
    assert float((got - want).abs().max()) <= 1e-5
    saved_state, start_state = _state(saved), _state(start)
    llm_moved = max(float(np.abs(saved_state[k] - start_state[k]).max()) for k in saved_state if k.startswith("llm."))
    enc_moved = max(
        float(np.abs(saved_state[k] - start_state[k]).max()) for k in saved_state if k.startswith("frontend.encoder.")
    )
    assert llm_moved > 1e-5 and enc_moved > 1e-6  # the update happened, to the LLM and to the encoder
    assert _max_diff({k: saved_state[f"frontend.{k}"] for k in trained_frontend}, trained_frontend) == 0.0
    # the llm/ part is a plain transformers causal LM folder
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(Path(out) / "llm", local_files_only=True)
    assert _max_diff(_state(hf), {k[4:]: v for k, v in saved_state.items() if k.startswith("llm.")}) == 0.0


def _manual_merge(peft_state: dict[str, np.ndarray], scaling: float) -> dict[str, np.ndarray]:
    """Plain HF names -> W + scaling * B @ A, from the learner's peft-named full state (independent of lora.py)."""
    out = {}
    for key, value in peft_state.items():
        if ".lora_" in key:
            continue
        name = key.removeprefix("llm.base_model.model.").replace(".base_layer.", ".")
        if ".base_layer.weight" in key:
            mod = key.removesuffix(".base_layer.weight")
            a, b = peft_state[f"{mod}.lora_A.default.weight"], peft_state[f"{mod}.lora_B.default.weight"]
            value = value + scaling * b @ a
        out[name] = value
    return out


def test_lora_update_saves_the_merged_model_and_an_llm_only_folder(tiny_model_dir, tmp_path):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModelForCausalLM

    cfg = learner_cfg(finetune="lora", ppo_epochs=1)
    batch = make_batch(1)
    with one_rank_learner(tiny_model_dir, cfg) as learner:
        learner.update(batch)
        want = learner.logprobs(batch)
        full = get_model_state_dict(learner.root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        peft_state = {k.removeprefix("model."): v.numpy().copy() for k, v in full.items() if k.startswith("model.llm.")}
        learner.save_model(str(tmp_path / "rl"))
        learner.save_model(str(tmp_path / "rl_llm"), llm_only=True)
    saved, start = load_audio_llm(tmp_path / "rl"), load_audio_llm(tiny_model_dir)
    assert float((_loaded_logprobs(saved, batch, from_audio=False) - want).abs().max()) <= 1e-5
    merged = _manual_merge(peft_state, cfg.lora.alpha / cfg.lora.r)
    saved_llm = {k: v.detach().numpy() for k, v in saved.llm.state_dict().items()}
    assert _max_diff(saved_llm, merged) <= 1e-6
    start_llm = {k: v.detach().numpy() for k, v in start.llm.state_dict().items()}
    moved = {k for k in start_llm if not np.array_equal(start_llm[k], saved_llm[k])}
    targets = tuple(f"{m}.weight" for m in cfg.lora.target_modules)
    assert moved and all(k.endswith(targets) for k in moved)  # only the LoRA layers changed, merged in
    assert _max_diff(_state(saved.frontend), _state(start.frontend)) == 0.0
    llm_only = AutoModelForCausalLM.from_pretrained(tmp_path / "rl_llm", local_files_only=True)
    assert _max_diff(_state(llm_only), saved_llm) == 0.0
    assert not (tmp_path / "rl_llm" / "frontend.safetensors").exists()


def _hf_logprobs_with_audio(hf, model, clip, completion: list[int]) -> torch.Tensor:
    """The transformers model's own forward on [prefix | <|audio|> x L_a | suffix | completion], with the HF
    feature extractor's input features: log-probs of the completion tokens."""
    import soundfile as sf
    from transformers import WhisperFeatureExtractor

    from policy.models.hf_audio_tiny import AUDIO_TOKEN
    from policy.models.prompt import prompt_token_ids

    wave, _ = sf.read(clip.audio, dtype="float32")
    n_audio = model.embed_audio(model.audio_features([wave]))[0].shape[0]
    tok = model.tokenizer
    p = prompt_token_ids(tok, model.template, clip.context)
    seq = list(p.prefix) + [tok.convert_tokens_to_ids(AUDIO_TOKEN)] * n_audio + list(p.suffix) + completion
    feats = WhisperFeatureExtractor(feature_size=128)(
        [wave], sampling_rate=16000, return_attention_mask=True, padding="max_length", return_tensors="pt"
    )
    logits = (
        hf(
            input_ids=torch.tensor([seq]),
            input_features=feats["input_features"],
            feature_attention_mask=feats["attention_mask"],
        )
        .logits[0]
        .float()
        .log_softmax(-1)
    )
    start = len(seq) - len(completion) - 1
    return logits[start : start + len(completion)].gather(-1, torch.tensor(completion)[:, None])[:, 0]


def test_qwen2_audio_full_update_saves_a_checkpoint_transformers_loads_unchanged(qwen2_audio_dir, waves, tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    batch = audio_batch(2, waves)
    with one_rank_learner(qwen2_audio_dir, learner_cfg(ppo_epochs=1), train_encoder=True) as learner:
        learner.update(batch)
        want = learner.logprobs(batch)
        out = learner.save_model(str(tmp_path / "rl"))
    names = {p.name for p in Path(out).iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"} <= names
    saved = load_audio_llm(out)
    assert float((_loaded_logprobs(saved, batch, from_audio=True) - want).abs().max()) <= 1e-5
    # transformers' own class loads the folder as it is (no missing or unexpected weight) ...
    hf, info = Qwen2AudioForConditionalGeneration.from_pretrained(
        out, local_files_only=True, dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), info
    hf = hf.eval()
    # ... its weights moved from the starting checkpoint's (audio tower and LLM) ...
    start = Qwen2AudioForConditionalGeneration.from_pretrained(
        qwen2_audio_dir, local_files_only=True, dtype=torch.float32
    )
    before, after = start.state_dict(), hf.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".audio_tower." in k for k in moved) and any(".language_model." in k for k in moved)
    # ... and its own forward (own feature extractor, audio placeholders) gives the learner's log-probs
    ids, mask = batch.rollout.token_ids, batch.rollout.mask
    with torch.no_grad():
        for b, g in [(0, 0), (1, 2), (2, 1)]:
            n = int(mask[b, g].sum())
            if n == 0:
                continue
            theirs = _hf_logprobs_with_audio(hf, saved, batch.rollout.prompts.clips[b], ids[b, g, :n].tolist())
            torch.testing.assert_close(theirs, want[b, g, :n], atol=1e-5, rtol=0)


def test_save_model_refuses_a_plain_model_that_does_not_match(tiny_model_dirs, tmp_path):
    """model_dir swapped for a different LLM family after setup: rank 0's error is raised, nothing written."""
    with one_rank_learner(tiny_model_dirs["qwen2"], learner_cfg(ppo_epochs=1)) as learner:
        learner.model_dir = str(tiny_model_dirs["llama"])  # untied head: an extra lm_head.weight
        with pytest.raises(ValueError, match="do not match the plain model"):
            learner.save_model(str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()
