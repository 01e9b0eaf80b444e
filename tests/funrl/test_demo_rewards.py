"""The demo's reward plugin: a graded length penalty on noise-only clips, loaded like any user plugin."""

import pytest

import rewards
from funrl.demo.rewards import char_accuracy, noise_length


def test_noise_length_grades_outputs_on_noise_clips_and_skips_speech_clips():
    hyps = ["", "one two", "a b c d e f g h i j k l m n o p q r s", "hello", "猫 狗"]
    refs = ["", "", "", "hello world", ""]
    assert noise_length(hyps, refs, [{}] * 5) == [-0.0, -2 / 16, -1.0, None, -2 / 16]


def test_char_accuracy_gives_near_misses_partial_credit_and_silence_none():
    hyps = ["bown sleep", "", "Brown, sleep!", "猫狗", "anything", "brwn slep xx"]
    refs = ["brown sleep", "brown", "brown sleep", "猫", "", "brown sleep"]
    # characters without spaces: "brownsleep" (10); one deletion -> 0.9; "brwnslepxx": 2 deletions + 2 insertions
    assert char_accuracy(hyps, refs, [{}] * 6) == pytest.approx([0.9, 0.0, 1.0, 0.0, None, 0.6])


@pytest.fixture
def registry_restored():
    saved = dict(rewards.REGISTRY)
    yield
    rewards.REGISTRY.clear()
    rewards.REGISTRY.update(saved)


def test_noise_length_loads_as_a_plugin_and_joins_the_total(registry_restored):
    name = rewards.load_plugin("funrl.demo.rewards:noise_length")
    assert name == "noise_length"
    weights = {"wer": 1.0, "hallucination": 1.0, "noise_length": 1.0}
    short, long_ = rewards.score_batch(["uh", "uh uh uh uh"], ["", ""], [{}, {}], weights=weights)
    assert short["hallucination"] == long_["hallucination"] == -1.0  # the built-in cannot tell them apart
    assert short["total"] == pytest.approx(-1 - 1 / 16) and long_["total"] == pytest.approx(-1 - 4 / 16)
    empty = rewards.score_batch([""], [""], [{}], weights=weights)[0]
    assert empty["total"] == pytest.approx(1.0)
