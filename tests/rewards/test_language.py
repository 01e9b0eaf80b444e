"""R4 language: script vote for zh/ja/ko/other scripts vs Latin; English vs other Latin languages."""

import pytest

from rewards.language import detect_language, expected_class, is_english, language


def one(hyp, lang):
    return language([hyp], [""], [{"lang": lang} if lang is not ... else {}])[0]


@pytest.mark.parametrize(
    "hyp, lang, expected",
    [
        ("The weather is nice today.", "en", 0.0),
        ("今天天气很好", "en", -1.0),
        ("今天天气很好", "zh", 0.0),
        ("the weather is nice today", "zh", -1.0),
        ("今日はいい天気です", "ja", 0.0),
        ("今日はいい天気です", "zh", -1.0),  # kana makes the CJK block Japanese
        ("오늘 날씨가 좋네요", "ko", 0.0),
        ("오늘 날씨가 좋네요", "ja", -1.0),
        ("привет мир", "ru", 0.0),
        ("привет мир", "en", -1.0),
        ("Der Hund ist sehr groß und die Katze ist klein.", "en", -1.0),  # German function words
        ("Der Hund ist sehr groß und die Katze ist klein.", "de", 0.0),
        ("The dog is very big and the cat is small.", "de", -1.0),
        ("Le chat est sur la table.", "fr", 0.0),  # other Latin languages are one class
        ("Le chat est sur la table.", "de", 0.0),
        ("我们用 Python 写代码", "zh", 0.0),  # mixed zh/en: 6 ideographs outvote 1 word
        ("hello 你好世界", "en", -1.0),
        ("hello 你", "en", 0.0),  # tie: the expected script wins
        ("hello 你", "zh", 0.0),
        ("Berlin", "en", 0.0),  # one name: undecided, never punished
        ("The weather is nice today.", "en-US", 0.0),
        ("今天天气很好", "zh_CN", 0.0),
        ("今天天气很好", "cmn", 0.0),
        ("今天天气很好", "xx", 0.0),  # unknown expected code: not checked
    ],
)
def test_language_reward_hand_computed(hyp, lang, expected):
    assert one(hyp, lang) == expected


@pytest.mark.parametrize(
    "hyp, lang",
    [
        ("今天天气很好", None),
        ("今天天气很好", ""),
        ("今天天气很好", ...),  # no expected language
        ("", "en"),
        ("...", "zh"),
        ("2024 12 31", "zh"),  # nothing with letters
    ],
)
def test_language_reward_is_zero_without_expected_language_or_letters(hyp, lang):
    assert one(hyp, lang) == 0.0


def test_long_latin_text_without_function_words_is_decided_by_lingua():
    german = "Donnerstag Wettervorhersage Regenschirm Bahnhof Fahrkarte Schnellzug Kindergarten"
    english = "weather forecast umbrella station ticket express train delay"
    assert is_english(german.lower().split()) is False
    assert is_english(english.split()) is True
    assert one(german, "en") == -1.0 and one(german, "de") == 0.0
    assert one(english, "de") == -1.0 and one(english, "en") == 0.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello there, how are you?", "en"),
        ("le chat est noir", "latin"),
        ("Berlin", "latin?"),
        ("我爱北京", "zh"),
        ("私は学生です", "ja"),
        ("감사합니다", "ko"),
        ("Γειά σου κόσμε", "greek"),
        ("مرحبا بالعالم", "arabic"),
        ("", None),
        ("42", None),
    ],
)
def test_detect_language_classes(text, expected):
    assert detect_language(text) == expected


@pytest.mark.parametrize(
    "code, expected",
    [
        ("en", "en"),
        ("EN-gb", "en"),
        ("eng", "en"),
        ("zh-Hant", "zh"),
        ("yue", "zh"),
        ("ja", "ja"),
        ("ko-KR", "ko"),
        ("de", "latin"),
        ("pt_BR", "latin"),
        ("sr-Latn", "latin"),
        ("sr", "cyrillic"),
        ("hi", "devanagari"),
        ("klingon", None),
        ("", None),
        (None, None),
    ],
)
def test_expected_class_maps_language_tags(code, expected):
    assert expected_class(code) == expected


def test_language_batch_equals_per_item_loop():
    hyps = ["the cat", "猫", "le chat est noir", "", "猫 cat dog", "네 고양이"]
    metas = [{"lang": "en"}, {"lang": "en"}, {"lang": "en"}, {"lang": "en"}, {"lang": "zh"}, {}]
    refs = [""] * len(hyps)
    assert language(hyps, refs, metas) == [language([h], [r], [m])[0] for h, r, m in zip(hyps, refs, metas)]
    assert language(hyps, refs, metas) == [0.0, -1.0, -1.0, 0.0, -1.0, 0.0]


@pytest.mark.parametrize(
    "hyp",
    [
        "small violin hat",  # demo references: "hat" is also German's "has"
        "kitchen hat hat zucchini nine labyrinth",
        "the war is over",
        "I am here",
        "N B S",  # spelled-out letters: "n" and "c" are French elisions too
        "pour the tea",
        "broccoli lunch te",  # one stray token that is a foreign function word: not enough
    ],
)
def test_english_words_that_are_also_foreign_function_words_are_not_a_mismatch(hyp):
    assert one(hyp, "en") == 0.0


def test_those_words_do_not_make_a_foreign_sentence_english():
    assert one("die Katze hat den Ball und ist nicht hier", "en") == -1.0  # und, ist, nicht still decide
