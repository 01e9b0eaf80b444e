"""funrl.inputs.load_inputs: the batch quotas of the config reach the sampler, and a quota the training manifest
cannot fill is a ConfigError naming the manifest and the key."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from funrl.config import ConfigError, load_config
from funrl.data import MixedSampler
from funrl.inputs import load_inputs


def _manifest(tmp_path, langs):
    lines = []
    for i, lang in enumerate(langs):
        wav = tmp_path / f"c{i}.wav"
        sf.write(wav, 0.1 * np.sin(np.arange(8000) * 0.05 * (i + 1)).astype(np.float32), 16000)
        lines.append({"audio": wav.name, "text": "" if lang is None else f"word {i}", "lang": lang})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_lang_and_noise_quotas_reach_the_sampler(tmp_path):
    path = _manifest(tmp_path, ["en", "en", "en", "zh", None])
    cfg = load_config(
        None,
        [f"data.train_manifest={path}", "run.clips_per_step=4", "data.noise_per_step=1", "data.lang_per_step.zh=1"],
    )
    sampler = load_inputs(cfg).sampler
    assert isinstance(sampler, MixedSampler) and sorted(sampler.pools) == ["lang:zh", "noise", "speech"]
    batch = sampler.next_batch()
    assert [c.lang for c in batch].count("zh") == 1 and sum(not c.text for c in batch) == 1


def test_a_language_quota_the_manifest_cannot_fill_names_the_manifest_and_the_key(tmp_path):
    path = _manifest(tmp_path, ["en", "en", "en"])
    cfg = load_config(None, [f"data.train_manifest={path}", "run.clips_per_step=4", "data.lang_per_step.zh=1"])
    with pytest.raises(ConfigError, match=r"train\.jsonl: data\.lang_per_step asks for 'zh' clips") as info:
        load_inputs(cfg)
    assert info.value.key == "data.lang_per_step"
