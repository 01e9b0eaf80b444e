"""scripts/probe_adapter_ctc.py: the adapter's own greedy CTC reading of each speech clip beside the LLM's
transcript, both scored by jiwer on the same clips."""

from __future__ import annotations

import json
import shutil

import jiwer
import pytest
import torch
from script_loader import load_script

from funrl.data import load_manifest
from funrl.eval_metrics import clip_results
from funrl.sft_embed_ctc import make_embed_ctc, save_head
from policy.messages import Clip
from policy.models.audio import load_audio
from policy.models.base import load_audio_llm
from rewards.text import tokens


def _clips_file(tmp_path, small_demo_data):
    """A funrl.eval per-clip file: two English speech clips, a noise-only clip and a Mandarin (CER) clip."""
    manifest = load_manifest(small_demo_data.manifest("test"))
    speech = [c.audio for c in manifest if c.text][:2]
    noise = next(c.audio for c in manifest if not c.text)
    clips = [
        Clip(audio=speech[0], text="one two three four", lang="en"),
        Clip(audio=speech[1], text="five six", lang="en"),
        Clip(audio=noise, text=""),
        Clip(audio=speech[0], text="我们", lang="zh"),
    ]
    records = clip_results(clips, ["one two tree four", "five six seven", "words on noise", "你们"])
    path = tmp_path / "r.clips.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, records[:2]


def test_both_readings_are_scored_by_jiwer_on_the_wer_scored_speech_clips_only(
    slam_asr_tiny_dir, small_demo_data, tmp_path
):
    model_dir = tmp_path / "model"
    shutil.copytree(slam_asr_tiny_dir, model_dir)
    model = load_audio_llm(model_dir)
    save_head(make_embed_ctc(model, ["one two three four five six"]), model_dir)
    clips, rows = _clips_file(tmp_path, small_demo_data)
    out = tmp_path / "probe.json"
    assert load_script("probe_adapter_ctc").main([str(model_dir), str(clips), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    refs = [r["ref"] for r in rows]
    assert result["clips"] == 2
    assert result["llm_wer"] == pytest.approx(jiwer.wer(refs, [r["hyp"] for r in rows]))  # 2 errors / 6 words
    # the adapter's reading, independently: nearest class per vector, merged, blanks dropped
    head = make_embed_ctc(model, ["one two three four five six"])
    mine = []
    with torch.no_grad():
        for r in rows:
            audio = model.frontend(model.frontend.features([load_audio(r["audio"])]))[0]
            classes = head.logits(audio).argmax(-1).tolist()
            ids = [head.tokens()[c - 1] for i, c in enumerate(classes) if c and (i == 0 or c != classes[i - 1])]
            mine.append(model.tokenizer.decode(ids).strip())
    assert [c["adapter"] for c in result["per_clip"]] == mine
    errors = sum(_edit_distance(tokens(m), tokens(r)) for m, r in zip(mine, refs))
    assert result["adapter_wer"] == pytest.approx(errors / 6)


def _edit_distance(hyp: tuple[str, ...], ref: tuple[str, ...]) -> int:
    row = list(range(len(ref) + 1))
    for i, h in enumerate(hyp, 1):
        prev, row[0] = row[0], i
        for j, r in enumerate(ref, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (h != r))
    return row[-1]


def test_a_model_without_the_embedding_ctc_is_refused_naming_the_file(slam_asr_tiny_dir, small_demo_data, tmp_path):
    clips, _ = _clips_file(tmp_path, small_demo_data)
    with pytest.raises(SystemExit, match="embed_ctc.safetensors not found.*embed_ctc_weight"):
        load_script("probe_adapter_ctc").main([str(slam_asr_tiny_dir), str(clips)])
