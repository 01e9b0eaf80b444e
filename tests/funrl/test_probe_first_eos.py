"""scripts/probe_first_eos.py: P(first token ends the answer) by hand, the group formula, the CLI on noise clips."""

from __future__ import annotations

import json

import pytest
import torch
from script_loader import load_script

from funrl.data import load_manifest
from policy.models import load_audio_llm
from policy.models.audio import load_audio

probe = load_script("probe_first_eos")


def test_group_has_empty_is_one_minus_all_nonempty():
    assert probe.group_has_empty(0.5, 2) == pytest.approx(0.75)
    assert probe.group_has_empty(0.1, 8) == pytest.approx(1 - 0.9**8)
    assert probe.group_has_empty(0.0, 8) == 0.0 and probe.group_has_empty(1.0, 8) == 1.0


@pytest.mark.slow
def test_first_eos_prob_is_the_softmax_mass_of_the_end_tokens_after_the_prompt(
    tiny_model_dir, small_demo_data, tmp_path
):
    model = load_audio_llm(tiny_model_dir).eval()
    clip = next(c for c in load_manifest(small_demo_data.manifest("test")) if not c.text)
    wave = load_audio(clip.audio)
    with torch.no_grad():
        p = probe.first_eos_prob(model, wave, clip.context)
        prompt = model.build_prompt_embeds(model.embed_audio(model.audio_features([wave])), [clip.context])[0]
        last = model.llm(inputs_embeds=prompt[None]).logits[0, -1].double().softmax(-1)
    assert p == pytest.approx(float(last[model.eos_token_ids].sum()), rel=1e-4)

    out = tmp_path / "p.json"
    assert probe.main([str(tiny_model_dir), str(small_demo_data.manifest("test")), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    noise = [c for c in load_manifest(small_demo_data.manifest("test")) if not c.text]
    assert len(report["clips"]) == len(noise) and all(0 <= r["p_first_eos"] <= 1 for r in report["clips"])
    assert report["share_groups_with_empty"] == pytest.approx(
        sum(probe.group_has_empty(r["p_first_eos"], 8) for r in report["clips"]) / len(noise)
    )


def test_a_manifest_without_noise_clips_exits_2(small_demo_data, capsys):
    assert probe.main(["unused", str(small_demo_data.manifest("sft_train"))]) == 2
    assert "no noise-only clips" in capsys.readouterr().err
