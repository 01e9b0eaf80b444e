"""funrl.eval under ``--normalizer`` (training: ``rewards.normalizer``): counts worked out by hand."""

from __future__ import annotations

import sys

import pytest

from funrl.eval import _parser, clip_results, main, summarise
from policy.messages import Clip
from rewards.text import _whisper_en

CLIPS = [
    Clip("/a/1.wav", "Twenty five apples.", "en"),  # basic: 1 S + 1 D over 3; whisper: 0 over 2
    Clip("/a/2.wav", "The colour red", "en"),  # basic: 1 S over 3; whisper: 0 over 3
    Clip("/a/3.wav", "", "en"),
]  # noise-only clip
HYPS = ["25 apples", "the color red", "uh"]


@pytest.mark.parametrize("normalizer, wer, words", [("basic", 3 / 6, 6), ("whisper_en", 0.0, 5)])
def test_eval_counts_under_each_normalizer(normalizer, wer, words):
    report = summarise(clip_results(CLIPS, HYPS, normalizer))
    assert report.wer == pytest.approx(wer)
    assert report.num_words == words
    assert report.hallucination_rate == 1.0  # "uh" on the noise clip, though whisper_en drops it
    assert report.normalizer == normalizer
    assert "eval.normalizer" not in report.as_metrics()


def test_eval_cli_takes_the_normalizer_option():
    args = _parser().parse_args(["--model", "m", "--manifest", "t.jsonl", "--normalizer", "whisper_en"])
    assert args.normalizer == "whisper_en"
    assert _parser().parse_args(["--model", "m", "--manifest", "t.jsonl"]).normalizer == "basic"


def test_eval_cli_refuses_an_uninstalled_normalizer_before_reading_anything(tmp_path, capsys, monkeypatch):
    _whisper_en.cache_clear()
    monkeypatch.setitem(sys.modules, "whisper_normalizer", None)  # the package not installed
    try:
        code = main(
            [
                "--model",
                str(tmp_path / "none"),
                "--manifest",
                str(tmp_path / "none.jsonl"),
                "--normalizer",
                "whisper_en",
            ]
        )
    finally:
        _whisper_en.cache_clear()
    assert code == 2
    err = capsys.readouterr().err
    assert "--normalizer" in err and "pip install 'funrl[whisper-en]'" in err


def test_config_key_rewards_normalizer_is_checked():
    from funrl.config import ConfigError, load_config

    assert load_config(None, ["rewards.normalizer=whisper_en"]).rewards.normalizer == "whisper_en"
    assert load_config(None, []).rewards.normalizer == "basic"
    with pytest.raises(ConfigError, match="rewards.normalizer must be one of basic, whisper_en"):
        load_config(None, ["rewards.normalizer=nfkc"])


def test_training_refuses_an_uninstalled_normalizer_naming_the_key(monkeypatch):
    from funrl.config import ConfigError, load_config
    from funrl.inputs import load_rewards

    cfg = load_config(None, ["rewards.normalizer=whisper_en"])
    _whisper_en.cache_clear()
    monkeypatch.setitem(sys.modules, "whisper_normalizer", None)
    try:
        with pytest.raises(ConfigError, match=r"rewards.normalizer: .*pip install 'funrl\[whisper-en\]'"):
            load_rewards(cfg)
    finally:
        _whisper_en.cache_clear()
