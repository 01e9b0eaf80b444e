"""Registry, score_batch (totals, weights, loop equivalence, bad rewards) and plugin loading."""

import math
import textwrap

import pytest

import rewards
from rewards import REGISTRY, RewardError, load_plugin, register, score_batch

BUILTIN = ["wer", "keyword", "hallucination", "language"]

HYPS = ["Hello world", "", "i will go go go go home now", "我爱北京", "thank you", "le chat est noir"]
REFS = ["hello, world!", "", "i will go home now", "我爱北京天安门", "", "the cat is black"]
METAS = [
    {"lang": "en", "keywords": ["world"]},
    {"lang": "en"},
    {"lang": "en", "keywords": ["home"]},
    {"lang": "zh", "keywords": ["天安门"]},
    {},
    {"lang": "en", "keywords": ["cat"]},
]


def test_builtin_rewards_are_registered_in_order():
    assert list(REGISTRY)[:4] == BUILTIN


def test_score_batch_rows_have_every_reward_and_hand_computed_totals():
    rows = score_batch(HYPS, REFS, METAS)
    assert all(list(r) == [*REGISTRY, "total"] for r in rows)
    assert rows[0] == {"wer": 1.0, "keyword": 1.0, "hallucination": 0.0, "language": 0.0, "total": 2.0}
    assert rows[1] == {"wer": 1.0, "keyword": None, "hallucination": 0.0, "language": 0.0, "total": 1.0}
    # wer 1 - 3/5, keyword 1, hallucination -3/5, language 0
    assert rows[2]["total"] == pytest.approx(0.4 + 1.0 - 0.6)
    # wer 4/7, keyword: recall 0, precision 1 -> 0.5
    assert rows[3]["keyword"] == 0.5 and rows[3]["total"] == pytest.approx(4 / 7 + 0.5)
    assert rows[4] == {"wer": 0.0, "keyword": None, "hallucination": -1.0, "language": 0.0, "total": -1.0}
    # wer 0 (4 substitutions of 4), keyword 0.5 (recall 0, precision 1), language -1
    assert rows[5]["language"] == -1.0 and rows[5]["wer"] == 0.0 and rows[5]["total"] == pytest.approx(-0.5)


def test_score_batch_equals_per_item_loop():
    batch = score_batch(HYPS, REFS, METAS)
    loop = [score_batch([h], [r], [m])[0] for h, r, m in zip(HYPS, REFS, METAS)]
    assert batch == loop
    direct = [{name: fn([h], [r], [m])[0] for name, fn in REGISTRY.items()} for h, r, m in zip(HYPS, REFS, METAS)]
    assert [{k: v for k, v in row.items() if k != "total"} for row in batch] == direct


def test_weights_mapping_leaves_unlisted_rewards_at_zero_and_skips_none():
    rows = score_batch(HYPS, REFS, METAS, weights={"wer": 2.0, "keyword": 0.5})
    for row in rows:
        expected = 2.0 * row["wer"] + (0.5 * row["keyword"] if row["keyword"] is not None else 0.0)
        assert row["total"] == pytest.approx(expected)
    assert rows[4]["total"] == 0.0  # hallucination -1 has weight 0 here
    assert all(list(row) == ["wer", "keyword", "total"] for row in rows)  # ... so it is not run


def test_weights_none_means_every_reward_weight_one():
    rows = score_batch(HYPS, REFS, METAS, weights=None)
    assert [r["total"] for r in rows] == [sum(v for k, v in r.items() if k != "total" and v is not None) for r in rows]


def test_unknown_weight_name_raises_value_error_listing_registered_names():
    with pytest.raises(ValueError, match=r"'wre'.*registered: wer, keyword, hallucination, language"):
        score_batch(HYPS, REFS, METAS, weights={"wre": 1.0})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1", None, True])
def test_non_finite_or_non_numeric_weight_raises(bad):
    with pytest.raises(RewardError, match="'wer'"):
        score_batch(HYPS, REFS, METAS, weights={"wer": bad})


def test_mismatched_lengths_raise():
    with pytest.raises(RewardError, match="same length, got 2, 1, 2"):
        score_batch(["a", "b"], ["a"], [{}, {}])


def test_empty_batch_gives_empty_list():
    assert score_batch([], [], []) == []


def test_duplicate_registration_raises_and_keeps_the_first(restore_registry):
    first = REGISTRY["wer"]
    with pytest.raises(RewardError, match="'wer' is already registered"):
        register("wer")(lambda h, r, m: [0.0] * len(h))
    assert REGISTRY["wer"] is first


@pytest.mark.parametrize("name", ["", "total", 3])
def test_reserved_or_empty_names_raise(name):
    with pytest.raises(RewardError):
        register(name)


def test_each_reward_is_called_once_per_batch(restore_registry):
    calls = []

    @register("count_calls")
    def count_calls(hyps, refs, metas):
        calls.append(len(hyps))
        return [float(len(h)) for h in hyps]

    rows = score_batch(HYPS, REFS, METAS, weights={"count_calls": 1.0})
    assert calls == [len(HYPS)]
    assert [r["total"] for r in rows] == [float(len(h)) for h in HYPS]


def test_reward_with_wrong_length_or_type_or_exception_is_named(restore_registry):
    register("short")(lambda h, r, m: [1.0])
    with pytest.raises(RewardError, match="'short' returned 1 values for a batch of 2"):
        score_batch(["a", "b"], ["a", "b"], [{}, {}])
    del REGISTRY["short"]
    register("text")(lambda h, r, m: ["x"] * len(h))
    with pytest.raises(RewardError, match="'text' returned 'x'"):
        score_batch(["a"], ["a"], [{}])
    del REGISTRY["text"]

    def boom(h, r, m):
        raise ZeroDivisionError("oops")

    register("boom")(boom)
    with pytest.raises(RewardError, match="'boom' failed: ZeroDivisionError: oops"):
        score_batch(["a"], ["a"], [{}])


def test_plugin_returning_a_number_instead_of_a_list_is_a_reward_error(restore_registry):
    register("scalar")(lambda h, r, m: 0.5)
    with pytest.raises(RewardError, match=r"'scalar' returned a float \(0.5\), not a list of 2 values"):
        score_batch(["a", "b"], ["a", "b"], [{}, {}], weights={"scalar": 1.0})


@pytest.mark.parametrize("value", ["0.5", b"0.5", {"x": 0.5}, None])
def test_plugin_returning_a_string_mapping_or_none_is_a_reward_error(restore_registry, value):
    register("odd")(lambda h, r, m: value)
    with pytest.raises(RewardError, match=f"'odd' returned a {type(value).__name__}"):
        score_batch(["a"], ["a"], [{}], weights={"odd": 1.0})


def test_reward_exception_names_the_reward_and_the_clip_that_fails_alone(restore_registry):
    def picky(hyps, refs, metas):
        return [1.0 / len(h) for h in hyps]  # ZeroDivisionError on the empty hypothesis

    register("picky")(picky)
    with pytest.raises(RewardError) as info:
        score_batch(["a", "", "c"], ["x", "y", "z"], [{}] * 3, weights={"picky": 1.0})
    assert str(info.value) == (
        "reward 'picky' failed: ZeroDivisionError: float division by zero; clip 1 (ref 'y', hyp '') fails alone too"
    )
    assert info.value.reward == "picky" and info.value.item == 1
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_reward_exception_only_on_the_whole_batch_says_no_clip_fails_alone(restore_registry):
    def pairs_only(hyps, refs, metas):
        if len(hyps) > 1:
            raise RuntimeError("batch too big")
        return [0.0]

    register("pairs_only")(pairs_only)
    with pytest.raises(
        RewardError,
        match=r"'pairs_only' failed: RuntimeError: batch too big; "
        r"no clip of the 2 fails alone",
    ) as info:
        score_batch(["a", "b"], ["a", "b"], [{}, {}], weights={"pairs_only": 1.0})
    assert info.value.item is None


def test_wrong_value_type_names_the_clip_with_its_reference_and_hypothesis(restore_registry):
    register("texty")(lambda h, r, m: [0.0, "x"])
    long_ref = "word " * 30
    with pytest.raises(RewardError) as info:
        score_batch(["a", "b c"], ["a", long_ref], [{}, {}], weights={"texty": 1.0})
    assert str(info.value) == (
        "reward 'texty' returned 'x' (a str) for clip 1 "
        f"(ref {long_ref[:40]!r}..., hyp 'b c'); expected a float or None"
    )


@pytest.mark.parametrize(
    "value, shown",
    [(float("nan"), "NaN"), (float("inf"), "inf"), (-float("inf"), "-inf"), (10**400, "inf")],
    ids=["nan", "inf", "-inf", "int-too-big"],
)
def test_non_finite_value_is_a_reward_error_naming_the_reward_and_the_clip(restore_registry, value, shown):
    register("shaky")(lambda h, r, m: [0.0 if x == "fine" else value for x in h])
    with pytest.raises(rewards.NonFiniteRewardError) as info:
        score_batch(["fine", "bad"], ["fine", "ref"], [{}, {}], weights={"shaky": 1.0})
    assert isinstance(info.value, RewardError)
    assert str(info.value) == (
        f"reward 'shaky' returned {shown} for clip 1 (ref 'ref', hyp 'bad'); a reward must be a finite number or None"
    )
    assert (info.value.reward, info.value.item) == ("shaky", 1)


def test_allow_nonfinite_keeps_the_value_and_spreads_it_to_the_total(restore_registry):
    register("shaky")(lambda h, r, m: [float("nan"), float("inf")])
    rows = score_batch(["a", "b"], ["a", "x"], [{}, {}], weights={"wer": 1.0, "shaky": 1.0}, allow_nonfinite=True)
    assert rows[0]["wer"] == 1.0 and rows[1]["wer"] == 0.0
    assert math.isnan(rows[0]["shaky"]) and math.isnan(rows[0]["total"])
    assert rows[1]["shaky"] == rows[1]["total"] == math.inf


def test_total_overflowing_to_inf_is_a_non_finite_reward_error(restore_registry):
    register("huge")(lambda h, r, m: [1e308] * len(h))
    with pytest.raises(rewards.NonFiniteRewardError, match=r"total is inf for clip 0 \(ref 'a', hyp 'a'\)") as info:
        score_batch(["a"], ["a"], [{}], weights={"huge": 2.0})
    assert (info.value.reward, info.value.item) == ("total", 0)


def test_reward_with_weight_zero_is_not_run(restore_registry):
    calls = []

    def broken(hyps, refs, metas):
        calls.append(len(hyps))
        return [float("nan")] * len(hyps)

    register("broken")(broken)
    rows = score_batch(HYPS, REFS, METAS, weights={"wer": 1.0, "broken": 0.0})
    assert calls == []
    assert rows[0] == {"wer": 1.0, "total": 1.0} and rows[4] == {"wer": 0.0, "total": 0.0}
    assert score_batch(HYPS, REFS, METAS, weights={"wer": 1.0, "broken": -0.0}) == rows and calls == []


# ---------------------------------------------------------------------------- plugins
def write(plugin_dir, name, body):
    (plugin_dir / f"{name}.py").write_text(textwrap.dedent(body))


def test_plugin_registers_under_function_name_and_is_scored(plugin_dir):
    write(
        plugin_dir,
        "brevity_plugin",
        """
        def brevity(hyps, refs, metas):
            return [-len(h.split()) / 10 for h in hyps]
    """,
    )
    assert load_plugin("brevity_plugin:brevity") == "brevity"
    assert load_plugin("brevity_plugin:brevity") == "brevity"  # loading twice is harmless
    rows = score_batch(["a b c"], ["a b c"], [{}])
    assert rows[0]["brevity"] == pytest.approx(-0.3)
    assert rows[0]["total"] == pytest.approx(1.0 - 0.3)  # wer 1, keyword None, hallucination 0, language 0


def test_decorated_plugin_keeps_its_registered_name(plugin_dir):
    write(
        plugin_dir,
        "decorated_plugin",
        """
        from rewards import register

        @register("shouting")
        def count_caps(hyps, refs, metas):
            return [float(sum(c.isupper() for c in h)) for h in hyps]
    """,
    )
    assert load_plugin("decorated_plugin:count_caps") == "shouting"
    assert "count_caps" not in REGISTRY
    assert score_batch(["AbC"], ["abc"], [{}], weights={"shouting": 1.0})[0]["total"] == 2.0


@pytest.mark.parametrize(
    "spec, body, message",
    [
        ("no_such_module_xyz:f", None, r"cannot import module 'no_such_module_xyz'"),
        ("attr_plugin:missing", "def present(h, r, m): return []\n", r"has no attribute 'missing'"),
        ("const_plugin:WEIGHT", "WEIGHT = 3\n", r"'WEIGHT' is a int, not a callable"),
        ("broken_plugin:f", "def f(:\n", r"cannot import module 'broken_plugin' \(SyntaxError"),
        ("just_a_module", None, r"expected 'module:function'"),
    ],
)
def test_plugin_errors_name_the_problem(plugin_dir, spec, body, message):
    if body is not None:
        write(plugin_dir, spec.split(":")[0], body)
    with pytest.raises(RewardError, match=message):
        load_plugin(spec)


def test_plugin_with_a_builtin_name_raises(plugin_dir):
    write(plugin_dir, "clash_plugin", "def wer(h, r, m): return [0.0] * len(h)\n")
    with pytest.raises(RewardError, match="'wer' is already registered"):
        load_plugin("clash_plugin:wer")


def test_rewards_package_imports_no_torch_and_nothing_of_funrl():
    import subprocess
    import sys

    code = (
        "import sys, rewards, rewards.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'funrl', 'policy', 'rollout')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert rewards.__all__
