"""R1 wer, R2 keyword, R3 hallucination: hand-computed values (docs/design.md#rewards)."""

import jiwer
import pytest

from rewards.builtin import hallucinated_tokens, hallucination, keyword, repetition_loops, wer
from rewards.text import tokens


def one(fn, hyp, ref, meta=None):
    return fn([hyp], [ref], [meta or {}])[0]


# ---------------------------------------------------------------------------- wer
@pytest.mark.parametrize(
    "hyp, ref, expected",
    [
        ("Hello world", "hello, World!", 1.0),  # punctuation and case do not count
        ("the cat sit on mat", "The cat sat on the mat.", 1 - 2 / 6),  # 1 substitution + 1 deletion
        ("我爱北京", "我爱北京天安门", 1 - 3 / 7),  # CJK: one token per ideograph
        ("我们用 java 写代码", "我们用Python写代码", 1 - 1 / 7),  # mixed zh/en: 1 substitution of 7
        ("b c d", "a", 0.0),  # WER 3 is clipped to 1
        ("", "a b", 0.0),  # all deleted
        ("", "", 1.0),  # noise-only clip, silent output
        ("...", "", 1.0),  # punctuation only = empty
        ("嗯", "", 0.0),  # noise-only clip, any output
    ],
)
def test_wer_reward_hand_computed(hyp, ref, expected):
    assert one(wer, hyp, ref) == pytest.approx(expected)


def test_wer_reward_equals_independent_jiwer_on_hand_tokenised_strings():
    cases = [  # (hyp, ref, hand-tokenised hyp, hand-tokenised ref)
        ("Hello word, 我爱 北", "Hello, World! 我爱北京", "hello word 我 爱 北", "hello world 我 爱 北 京"),
        ("It's a GOOD day", "it is a good day!", "it s a good day", "it is a good day"),
        ("上海 is big big", "上海 is big", "上 海 is big big", "上 海 is big"),
    ]
    got = wer([c[0] for c in cases], [c[1] for c in cases], [{}] * len(cases))
    for (_, _, hyp_t, ref_t), value in zip(cases, got):
        assert value == pytest.approx(1 - min(1.0, jiwer.wer(ref_t, hyp_t)))


# ---------------------------------------------------------------------------- keyword
@pytest.mark.parametrize("meta", [{}, {"keywords": []}, {"keywords": None}, {"keywords": ["!!", "。"]}])
def test_keyword_reward_is_none_without_usable_keywords(meta):
    assert one(keyword, "john smith", "john smith", meta) is None


@pytest.mark.parametrize(
    "hyp, ref, kws, expected",
    [
        ("please call john smith tomorrow", "Please call John Smith, tomorrow.", ["John Smith"], 1.0),
        ("please call john and smith", "please call john smith", ["John Smith"], 0.5),  # phrase broken: recall 0
        ("start now", "art now", ["art"], 0.5),  # part of a token is no match
        ("apple pie and cherry split", "apple pie and banana split", ["apple", "banana", "cherry"], 0.5),  # P=R=1/2
        ("banana", "apple", ["banana"], 0.5),  # K_ref empty -> recall 1; precision 0
        ("pear", "apple", ["banana"], 1.0),  # neither contains it: recall 1, precision 1
        ("我爱北京天安", "我爱北京天安门", ["天安门"], 0.5),  # CJK keyword = run of ideographs
        ("i love new york", "I love New York", ["New-York"], 1.0),  # keyword normalised too
        ("john smith in london", "john smith in paris", ["John Smith", "JOHN SMITH!", "paris"], 0.75),  # a set
    ],
)
def test_keyword_reward_hand_computed(hyp, ref, kws, expected):
    assert one(keyword, hyp, ref, {"keywords": kws}) == pytest.approx(expected)


# ---------------------------------------------------------------------------- hallucination
@pytest.mark.parametrize(
    "hyp, expected",
    [
        ("a b", []),
        ("go go", []),  # twice is not a loop
        ("i go go go go home", [(1, 1, 4)]),  # (start, unit, total tokens)
        ("do it do it do it now", [(0, 2, 6)]),
        ("x one two three one two three one two three", [(1, 3, 9)]),
        ("a b c d a b c d a b c d", [(0, 4, 12)]),
        ("a b c d e a b c d e a b c d e", []),  # a 5-token unit is not a loop
        ("京京京 好 好 好", [(0, 1, 3), (3, 1, 3)]),
    ],
)
def test_repetition_loops_units_of_one_to_four_tokens(hyp, expected):
    assert repetition_loops(tokens(hyp)) == expected


REF20 = "a b c d e f g h i j k l m n o p q r s t"


@pytest.mark.parametrize(
    "hyp, ref, expected",
    [
        ("a b c d", "a b c d", 0.0),
        ("", "", 0.0),  # noise-only clip, silent
        ("thank you", "", -1.0),  # noise-only clip: every token
        ("谢", "", -1.0),
        ("!!!", "", 0.0),
        ("i will go go go go home now", "i will go home now", -3 / 5),  # 1-token unit x4: 3 beyond the first
        ("we can do it do it do it today", "we can do it today", -4 / 5),  # 2-token unit x3
        (
            "one two three one two three one two three four five six seven eight nine ten",
            "one two three four five six seven eight nine ten",
            -6 / 10,
        ),  # 3-token unit x3
        ("a b c d a b c d a b c d e f g h i j k l m n o p q r s t", REF20, -8 / 20),  # 4-token unit x3
        ("a b c d e a b c d e a b c d e f g h i j k l m n o p q r s t", REF20, 0.0),  # 5-token unit: no loop
        ("我们今天去北京京京京", "我们今天去北京", -3 / 7),  # CJK loop
        ("no no no i said no", "no no no i said no", 0.0),  # the reference loops the same way
        ("no no no no i said", "no no no i said", 0.0),  # ... even with one more repeat
        ("哈哈哈好笑", "哈哈哈好笑", 0.0),
        ("a b c d e f g h i j k l m n", "a b c d e", -2 / 5),  # 14 tokens > 2*5+2: 2 beyond
        ("x y z z z z z z", "x y", -1.0),  # clipped at -1
    ],
)
def test_hallucination_reward_hand_computed(hyp, ref, expected):
    assert one(hallucination, hyp, ref) == pytest.approx(expected)


def test_hallucination_counts_a_loop_token_beyond_the_length_cap_once():
    ref = tuple("abcdefghij")  # N_ref = 10, cap = 22
    hyp = ref + tuple("klmnopqrstu") + ("z",) * 4  # 21 distinct tokens, then z x4 (22..24 excess)
    assert len(hyp) == 25
    assert hallucinated_tokens(hyp, ref) == 3  # loop excess {22,23,24} = beyond cap {22,23,24}
    assert one(hallucination, " ".join(hyp), " ".join(ref)) == pytest.approx(-0.3)


def test_builtin_rewards_batch_equals_per_item_loop():
    hyps = ["a a a a b", "", "john smith", "我爱北京", "x y z z z z z z", "thank you"]
    refs = ["a b", "", "john smith here", "我爱北京天安门", "x y", ""]
    metas = [{}, {"keywords": ["x"]}, {"keywords": ["john smith", "here"]}, {"keywords": ["天安门"]}, {}, {}]
    for fn in (wer, keyword, hallucination):
        batch = fn(hyps, refs, metas)
        loop = [fn([h], [r], [m])[0] for h, r, m in zip(hyps, refs, metas)]
        assert batch == loop
