"""rewards.text: the one normaliser (NFKC, lower-case, P* -> space, collapsed whitespace) and the tokeniser."""

import pytest

from rewards.text import normalize, token_string, tokenize, tokens


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Hello, World!", "hello world"),
        ("  many\t spaces \n here  ", "many spaces here"),
        ("ＡＢＣ１２３ ﬁne", "abc123 fine"),  # NFKC: full-width forms, ligature
        ("don't stop—“now”…", "don t stop now"),  # every P* char becomes a space
        ("你好，世界。", "你好 世界"),  # CJK punctuation is P* too
        ("$5 + 3 = 8", "$5 + 3 = 8"),  # symbols (S*) and digits stay
        ("...!?", ""),
    ],
)
def test_normalize_nfkc_lowercase_punctuation_to_space(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Hello, World!", ["hello", "world"]),
        ("我爱 Beijing", ["我", "爱", "beijing"]),
        ("我们用Python写代码。", ["我", "们", "用", "python", "写", "代", "码"]),
        ("私はりんご", ["私", "はりんご"]),  # kana is not an ideograph: a run stays one token
        ("서울 날씨", ["서울", "날씨"]),
        ("", []),
        ("。，！", []),
    ],
)
def test_tokenize_splits_each_cjk_ideograph_and_whitespace_runs(raw, expected):
    assert tokenize(raw) == expected
    assert tokens(raw) == tuple(expected)


def test_token_string_matches_only_whole_token_runs():
    s = token_string(tokenize("Start the art show"))
    assert s == " start the art show "
    assert token_string(tokenize("ART")) in s
    assert token_string(tokenize("tart")) not in s
    assert token_string(tokenize("the art")) in s
    assert token_string(()) == " "
