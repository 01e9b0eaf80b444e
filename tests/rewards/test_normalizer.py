"""rewards.normalizer = basic | whisper_en: the WER and keyword rewards, the reward CLI and funrl.eval under each
normaliser, against WERs worked out by hand and against jiwer on text put through transformers' Whisper English
normaliser directly."""

from __future__ import annotations

import json
import sys

import jiwer
import pytest

import rewards
from rewards.cli import main as rewards_main
from rewards.replay import replay
from rewards.text import NormalizerError, _whisper_en, check_normalizer, tokens

# (ref, hyp, reward wer under basic, under whisper_en), by hand:
CASES = [
    # basic: ref [twenty five apples], hyp [25 apples]: 1 S + 1 D over 3; whisper: "25 apples" both
    ("Twenty five apples.", "25 apples", 1 - 2 / 3, 1.0),
    # basic: colour/color 1 S over 3; whisper maps colour -> color
    ("The colour red", "the color red", 1 - 1 / 3, 1.0),
    # basic: [i won t go] vs [i will not go]: 2 S over 4; whisper expands won't -> will not
    ("I won't go", "i will not go", 1 - 2 / 4, 1.0),
    # a real error stays one: whisper [25 colors] vs [25 collars]: 1 S over 2; basic: 3 tokens vs 2, 2 S + 1 D
    ("twenty five colours", "25 collars", 0.0, 1 - 1 / 2),
]


def whisper_en_of(text: str) -> str:
    """transformers' EnglishTextNormalizer with the whisper-normalizer package's spelling map, built here
    without going through rewards.text."""
    import importlib.resources

    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    mapping = json.loads(
        (importlib.resources.files("whisper_normalizer") / "normalizers" / "english.json").read_text(encoding="utf-8")
    )
    return EnglishTextNormalizer(mapping)(text)


@pytest.mark.parametrize("normalizer, column", [("basic", 2), ("whisper_en", 3)])
def test_wer_reward_under_each_normalizer_matches_the_hand_computed_values(normalizer, column):
    refs, hyps = [c[0] for c in CASES], [c[1] for c in CASES]
    rows = rewards.score_batch(hyps, refs, None, {"wer": 1.0}, normalizer=normalizer)
    assert [r["wer"] for r in rows] == pytest.approx([c[column] for c in CASES])


def test_whisper_en_wer_equals_jiwer_on_whisper_normalised_text():
    refs, hyps = [c[0] for c in CASES], [c[1] for c in CASES]
    rows = rewards.score_batch(hyps, refs, None, {"wer": 1.0}, normalizer="whisper_en")
    for (ref, hyp, *_), row in zip(CASES, rows):
        expected = jiwer.wer(whisper_en_of(ref), whisper_en_of(hyp))
        assert row["wer"] == pytest.approx(1 - min(1.0, expected))


def test_whisper_en_keeps_decimals_and_currency_as_one_token():
    assert tokens("It costs 3.5 dollars", "whisper_en") == ("it", "costs", "$3.5")
    assert tokens("It costs 3.5 dollars") == ("it", "costs", "3", "5", "dollars")


def test_keyword_reward_matches_british_and_american_spellings_under_whisper_en():
    meta = [{"keywords": ["colour"]}]
    basic = rewards.score_batch(["the color red"], ["the colour red"], meta, {"keyword": 1.0})
    whisper = rewards.score_batch(
        ["the color red"], ["the colour red"], meta, {"keyword": 1.0}, normalizer="whisper_en"
    )
    assert basic[0]["keyword"] == 0.5  # recall 0 (missed), precision 1 (nothing claimed)
    assert whisper[0]["keyword"] == 1.0


def test_hallucination_counts_any_output_on_noise_whatever_the_normalizer():
    # "uh" normalises to nothing under whisper_en, but it is still output on a noise-only clip
    assert whisper_en_of("uh") == ""
    for normalizer in ("basic", "whisper_en"):
        rows = rewards.score_batch(["uh"], [""], None, {"hallucination": 1.0}, normalizer=normalizer)
        assert rows[0]["hallucination"] == -1.0


def test_the_normalizer_is_selected_for_one_batch_only():
    rewards.score_batch(["25"], ["twenty five"], None, {"wer": 1.0}, normalizer="whisper_en")
    assert rewards.score_batch(["25"], ["twenty five"], None, {"wer": 1.0})[0]["wer"] == 0.0


def test_unknown_normalizer_is_a_reward_error_listing_the_choices():
    with pytest.raises(rewards.RewardError, match="unknown normalizer 'whisper'.*basic, whisper_en"):
        rewards.score_batch(["a"], ["a"], None, {"wer": 1.0}, normalizer="whisper")


@pytest.fixture
def without_spelling_map(monkeypatch):
    """What the library sees when the whisper-normalizer package is not installed."""
    _whisper_en.cache_clear()
    monkeypatch.setitem(sys.modules, "whisper_normalizer", None)
    yield
    _whisper_en.cache_clear()


def test_missing_spelling_map_names_the_extra_to_install(without_spelling_map):
    with pytest.raises(NormalizerError, match=r"pip install 'funrl\[whisper-en\]'"):
        check_normalizer("whisper_en")


# ------------------------------------------------------------------------------------------ reward CLI


def test_reward_cli_scores_with_the_normalizer_option(tmp_path):
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps({"hyp": h, "ref": r}) + "\n" for r, h, *_ in CASES))
    for normalizer, column in (("basic", 2), ("whisper_en", 3)):
        out = tmp_path / f"{normalizer}.jsonl"
        assert (
            rewards_main(["score", str(src), "--weights", "wer=1", "--normalizer", normalizer, "--out", str(out)]) == 0
        )
        got = [json.loads(line)["wer"] for line in out.read_text().splitlines()]
        assert got == pytest.approx([c[column] for c in CASES])


def test_reward_cli_refuses_a_normalizer_it_cannot_run(tmp_path, capsys, without_spelling_map):
    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps({"hyp": "a", "ref": "a"}) + "\n")
    assert rewards_main(["score", str(src), "--normalizer", "whisper_en"]) == 2
    assert "--normalizer: normalizer 'whisper_en' needs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rewards_main(["score", str(src), "--normalizer", "nfkc"])


def test_replay_rescores_under_the_normalizer(tmp_path):
    group = {"ref": "twenty five apples", "hyps": ["25 apples", "twenty five apples"], "total": [0.0, 1.0], "meta": {}}
    src = tmp_path / "rollouts.jsonl"
    src.write_text(json.dumps({"step": 1, "clips": [group]}) + "\n")
    basic = replay(str(src), {"wer": 1.0}).as_dict()
    whisper = replay(str(src), {"wer": 1.0}, normalizer="whisper_en").as_dict()
    assert basic["rewards"]["wer"]["mean"] == pytest.approx((1 / 3 + 1.0) / 2)
    assert whisper["rewards"]["wer"]["mean"] == 1.0  # both hypotheses read "25 apples": a flat group
    assert rewards_main(["replay", str(src), "--weights", "wer=1", "--normalizer", "whisper_en"]) == 0
