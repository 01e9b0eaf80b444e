"""Registry, score_batch (totals, weights, loop equivalence) and plugin loading."""
import textwrap

import pytest

import rewards
from rewards import REGISTRY, RewardError, load_plugin, register, score_batch

BUILTIN = ["wer", "keyword", "hallucination", "language"]

HYPS = ["Hello world", "", "i will go go go go home now", "我爱北京", "thank you", "le chat est noir"]
REFS = ["hello, world!", "", "i will go home now", "我爱北京天安门", "", "the cat is black"]
METAS = [{"lang": "en", "keywords": ["world"]}, {"lang": "en"}, {"lang": "en", "keywords": ["home"]},
         {"lang": "zh", "keywords": ["天安门"]}, {}, {"lang": "en", "keywords": ["cat"]}]


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
    assert rows[4]["total"] == 0.0                      # hallucination -1 has weight 0 here
    assert rows[4]["hallucination"] == -1.0             # ... but is still reported


def test_weights_none_means_every_reward_weight_one():
    rows = score_batch(HYPS, REFS, METAS, weights=None)
    assert [r["total"] for r in rows] == [sum(v for k, v in r.items() if k != "total" and v is not None)
                                          for r in rows]


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


# ---------------------------------------------------------------------------- plugins
def write(plugin_dir, name, body):
    (plugin_dir / f"{name}.py").write_text(textwrap.dedent(body))


def test_plugin_registers_under_function_name_and_is_scored(plugin_dir):
    write(plugin_dir, "brevity_plugin", """
        def brevity(hyps, refs, metas):
            return [-len(h.split()) / 10 for h in hyps]
    """)
    assert load_plugin("brevity_plugin:brevity") == "brevity"
    assert load_plugin("brevity_plugin:brevity") == "brevity"       # loading twice is harmless
    rows = score_batch(["a b c"], ["a b c"], [{}])
    assert rows[0]["brevity"] == pytest.approx(-0.3)
    assert rows[0]["total"] == pytest.approx(1.0 - 0.3)       # wer 1, keyword None, hallucination 0, language 0


def test_decorated_plugin_keeps_its_registered_name(plugin_dir):
    write(plugin_dir, "decorated_plugin", """
        from rewards import register

        @register("shouting")
        def count_caps(hyps, refs, metas):
            return [float(sum(c.isupper() for c in h)) for h in hyps]
    """)
    assert load_plugin("decorated_plugin:count_caps") == "shouting"
    assert "count_caps" not in REGISTRY
    assert score_batch(["AbC"], ["abc"], [{}], weights={"shouting": 1.0})[0]["total"] == 2.0


@pytest.mark.parametrize("spec, body, message", [
    ("no_such_module_xyz:f", None, r"cannot import module 'no_such_module_xyz'"),
    ("attr_plugin:missing", "def present(h, r, m): return []\n", r"has no attribute 'missing'"),
    ("const_plugin:WEIGHT", "WEIGHT = 3\n", r"'WEIGHT' is a int, not a callable"),
    ("broken_plugin:f", "def f(:\n", r"cannot import module 'broken_plugin' \(SyntaxError"),
    ("just_a_module", None, r"expected 'module:function'"),
])
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
    code = ("import sys, rewards, rewards.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'funrl', 'policy', 'rollout')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert rewards.__all__
