"""``python -m rewards replay``: rescoring logged rollouts, against numbers computed by hand.

The hand-written run logged totals = wer (the run's mix was wer=1); the new mix is wer=1,keyword=1.
With ref "a b c d": "a b c" has wer .75, "x b c d" .75, "x y c d" .5; keyword (precision + recall) / 2.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import rewards
from rewards.replay import RolloutsError, read_steps, replay

ROOT = Path(__file__).resolve().parents[2]
KW_D = {"lang": None, "keywords": ["d"]}
# new totals (wer + keyword) in the comments; the logged "total" is the run's (wer)
A = {"ref": "a b c d", "meta": KW_D, "hyps": ["a b c d", "a b c", "x b c d"], "total": [1.0, 0.75, 0.75]}  # 2 1.25 1.75
B = {"ref": "a b c d", "meta": KW_D, "hyps": ["a b c", "x y c d"], "total": [0.75, 0.5]}  # 1.25 1.5
C = {"ref": "", "meta": {"lang": None, "keywords": []}, "hyps": ["", ""], "total": [1.0, 1.0]}  # 1 1
D = {
    "ref": "a b",
    "meta": {"lang": None, "keywords": ["b"]},
    "hyps": ["a b", "a", "b", "a b"],
    "total": [1.0, 0.5, 0.5, 1.0],
}  # 2 1 1.5 2
E = {
    "ref": "a b c d",
    "meta": {"lang": None, "keywords": ["a", "d"]},
    "hyps": ["a b c", "a x y d"],
    "total": [0.75, 0.5],
}  # 1.5 1.5
NEW_MIX = {"wer": 1.0, "keyword": 1.0}


def write_rollouts(path: Path, *steps, extra: str = "") -> Path:
    lines = [
        json.dumps({"step": i + 1, "clips": [dict(c, audio=f"{i}.wav") for c in clips]}) + "\n"
        for i, clips in enumerate(steps)
    ]
    path.write_text(lines[0] + "\n" + "".join(lines[1:]) + extra, encoding="utf-8")  # a blank line 2
    return path


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "rewards", "replay", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=60,
    )


def test_changed_best_counts_a_tied_best_as_changed_only_when_the_set_changes(tmp_path):
    rep = replay(str(write_rollouts(tmp_path / "r.jsonl", [A, B], [C, D], [E])), NEW_MIX)
    # A {0} -> {0}; B {0} -> {1}; C {0,1} -> {0,1}; D {0,3} -> {0,3} (tied, same set); E {0} -> {0,1}
    assert (rep.steps, rep.groups, rep.hypotheses) == (3, 5, 13)
    assert rep.best_changed == 2 and rep.share(rep.best_changed) == pytest.approx(0.4)


def test_flat_share_of_the_run_and_of_the_new_mix(tmp_path):
    rep = replay(str(write_rollouts(tmp_path / "r.jsonl", [A, B], [C, D], [E])), NEW_MIX)
    assert (rep.flat_run, rep.flat_new) == (1, 2)  # C in both; E only under the new mix (1.5, 1.5)
    assert rep.as_dict()["flat"] == {"run": {"count": 1, "share": 0.2}, "new": {"count": 2, "share": 0.4}}


def test_per_reward_means_under_the_new_mix(tmp_path):
    rep = replay(str(write_rollouts(tmp_path / "r.jsonl", [A, B], [C, D], [E])), NEW_MIX).as_dict()
    kw = [1, 0.5, 1, 0.5, 1, 1, 0.5, 1, 1, 0.75, 1]  # C has no keywords: not applicable
    assert rep["rewards"]["wer"]["count"] == 13 and rep["rewards"]["wer"]["mean"] == pytest.approx(10 / 13)
    assert rep["rewards"]["keyword"]["count"] == 11 and rep["rewards"]["keyword"]["mean"] == pytest.approx(9.25 / 11)
    assert rep["rewards"]["keyword"]["std"] == pytest.approx(math.sqrt(sum((k - 9.25 / 11) ** 2 for k in kw) / 11))
    assert rep["rewards"]["total"]["mean"] == pytest.approx(19.25 / 13)
    assert rep["run_total"]["mean"] == pytest.approx(10 / 13)
    assert rep["clips_without_meta"] == 0


def test_rank_correlation_pooled_and_per_group_by_hand(tmp_path):
    rep = replay(str(write_rollouts(tmp_path / "r.jsonl", [A, B])), NEW_MIX)
    # GRPO: run A [1.155, -.577, -.577], B [.707, -.707]; new A [.873, -1.091, .218], B [-.707, .707]
    # pooled ranks run [5, 2.5, 2.5, 4, 1], new [5, 1, 3, 2, 4] -> 2 / sqrt(9.5 * 10)
    assert rep.spearman_pooled == pytest.approx(2 / math.sqrt(95))
    # per group: A ranks [3, 1.5, 1.5] vs [3, 1, 2] -> 1.5 / sqrt(1.5 * 2); B -> -1
    assert rep.spearman_groups == 2
    assert rep.spearman_group_mean == pytest.approx((1.5 / math.sqrt(3) - 1) / 2)


def test_estimator_choice_changes_the_pooled_correlation_not_the_groups(tmp_path):
    q = {"ref": "a b c d", "meta": KW_D, "hyps": ["a b c d", "a b"], "total": [1.0, 0.5]}
    src = str(write_rollouts(tmp_path / "r.jsonl", [A, q]))
    same = replay(src, {"wer": 1.0})
    assert same.spearman_pooled == pytest.approx(1.0) and same.best_changed == 0
    # grpo A [1.155, -.577, -.577], q [.707, -.707]: ranks [5, 2.5, 2.5, 4, 1]
    # dr_grpo A [.167, -.083, -.083], q [.25, -.25]: ranks [4, 2.5, 2.5, 5, 1] -> 8.5 / 9.5
    dr = replay(src, {"wer": 1.0}, advantage="dr_grpo", run_advantage="grpo")
    assert dr.spearman_pooled == pytest.approx(8.5 / 9.5)
    assert dr.spearman_group_mean == pytest.approx(1.0) and dr.best_changed == 0 and dr.flat_new == 0
    out = run(src, "--weights", "wer=1", "--run-advantage", "grpo", "--advantage", "dr_grpo")
    assert out.returncode == 0, out.stderr
    assert "advantage: dr_grpo (run's: grpo)" in out.stdout and f"{8.5 / 9.5:.3f}" in out.stdout


def test_replay_with_the_runs_own_weights_reproduces_its_totals(tmp_path):
    weights = {"wer": 1.0, "keyword": 0.5, "hallucination": 1.0, "language": 1.0}
    groups = [
        (
            "Call Doctor Okafor now.",
            {"lang": "en", "keywords": ["Okafor"]},
            ["call doctor okafor now", "call doctor", "call doctor okafor okafor okafor okafor", "打电话"],
        ),
        ("", {"lang": "en", "keywords": []}, ["", "thank you thank you thank you", "", "bye"]),
        ("turn on the lights", {"lang": "en", "keywords": []}, ["turn on the lights"] * 2),
        ("我爱北京", {"lang": "zh", "keywords": []}, ["我爱北京", "我爱", "i love beijing"]),
    ]
    clips = []
    for ref, meta, hyps in groups:
        rows = rewards.score_batch(hyps, [ref] * len(hyps), [meta] * len(hyps), weights)
        clips.append({"ref": ref, "meta": meta, "hyps": hyps, "total": [r["total"] for r in rows]})
    src = write_rollouts(tmp_path / "r.jsonl", clips[:2], clips[2:])
    rep = replay(str(src), weights)
    assert rep.groups == 4 and rep.best_changed == 0
    assert rep.flat_new == rep.flat_run == 1  # the two identical "turn on the lights"
    assert rep.spearman_pooled == pytest.approx(1.0) and rep.spearman_group_mean == pytest.approx(1.0)
    assert rep.rewards["total"].mean == pytest.approx(rep.run_total.mean)


def test_table_on_stdout_and_numbers_in_out_json(tmp_path):
    src = write_rollouts(tmp_path / "r.jsonl", [A, B], [C, D], [E])
    out = run(src, "--weights", "wer=1,keyword=1", "--out", tmp_path / "report.json")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[0] == f"replay of {src}: 3 steps, 5 groups, 13 hypotheses"
    assert any(
        ln.split()[:3] == ["flat", "groups", "(advantage"] and ln.split()[-4:] == ["20.0", "%", "40.0", "%"]
        for ln in lines
    )
    assert any(ln.startswith("best hypothesis changed") and "40.0 %" in ln and "2 of 5 groups" in ln for ln in lines)
    assert any(ln.split()[:3] == ["keyword", "11", f"{9.25 / 11:.4f}"] for ln in lines)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["best_changed"] == {"count": 2, "share": 0.4} and report["weights"] == NEW_MIX
    assert report["advantage"] == report["run_advantage"] == "grpo"


def test_file_without_meta_is_rescored_without_keywords_and_said_once(tmp_path):
    old = [{k: v for k, v in c.items() if k != "meta"} for c in (A, B)]
    out = run(
        write_rollouts(tmp_path / "r.jsonl", old, old),
        "--weights",
        "wer=1,keyword=1",
        "--out",
        tmp_path / "report.json",
    )
    assert out.returncode == 0, out.stderr
    assert len(out.stderr.splitlines()) == 1 and "4 of 4 clips have no 'meta'" in out.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rewards"]["keyword"] == {"count": 0, "mean": None, "std": None}
    assert report["best_changed"]["count"] == 0  # the new totals are the wer the run logged


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"clips": [\n', ":4: invalid JSON"),
        ("[1, 2]\n", ":4: expected a JSON object, got list"),
        ('{"step": 3}\n', ":4: missing 'clips'"),
        ('{"clips": [{"ref": "a", "hyps": ["a"]}]}\n', ":4: clip 0: missing 'total'"),
        ('{"clips": [{"ref": "a", "hyps": ["a", "b"], "total": [1]}]}\n', ":4: clip 0: 1 totals for 2 hypotheses"),
        ('{"clips": [{"ref": "a", "hyps": ["a"], "total": [NaN]}]}\n', ":4: clip 0: 'total' must be a list of finite"),
        ('{"clips": [{"ref": "a", "hyps": [], "total": []}]}\n', ":4: clip 0: 'hyps' must be a non-empty list"),
        (
            '{"clips": [{"ref": "a", "hyps": ["a"], "total": [1], "meta": {"keywords": "x"}}]}\n',
            ":4: clip 0: meta 'keywords' must be a list of strings",
        ),
    ],
)
def test_bad_line_exits_2_naming_file_and_line(tmp_path, bad_line, message):
    src = write_rollouts(tmp_path / "r.jsonl", [A], [B], extra=bad_line)  # lines 1, blank 2, 3, bad 4
    out = run(src, "--weights", "wer=1")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]  # one line, no traceback
    assert f"{src}{message}" in out.stderr, out.stderr


def test_unknown_reward_name_exits_2_with_the_librarys_message(tmp_path):
    out = run(write_rollouts(tmp_path / "r.jsonl", [A]), "--weights", "wer=1,kewyord=1")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("rewards: error: --weights: unknown reward 'kewyord' in weights; registered:")
    assert len(out.stderr.strip().splitlines()) == 1


def test_missing_file_and_empty_file_exit_2(tmp_path):
    out = run(tmp_path / "absent.jsonl")
    assert out.returncode == 2 and f"rollouts file not found: {tmp_path / 'absent.jsonl'}" in out.stderr
    (tmp_path / "empty.jsonl").write_text("\n")
    out = run(tmp_path / "empty.jsonl")
    assert out.returncode == 2 and "no logged groups" in out.stderr


def test_failing_plugin_exits_1_naming_line_clip_and_hypothesis(tmp_path):
    (tmp_path / "boom_reward.py").write_text(
        "def boom(hyps, refs, metas):\n"
        "    if 'x y c d' in hyps:\n        raise RuntimeError('no')\n"
        "    return [0.0] * len(hyps)\n"
    )
    out = run(
        write_rollouts(tmp_path / "r.jsonl", [A], [C, B]),
        "--plugin",
        "boom_reward:boom",
        "--weights",
        "wer=1,boom=1",
        cwd=tmp_path,
    )
    assert out.returncode == 1 and out.stdout == ""
    assert "reward 'boom' failed: RuntimeError: no" in out.stderr
    assert out.stderr.rstrip().endswith("r.jsonl:3: clip 1, hypothesis 1")


def test_lines_are_read_one_at_a_time(tmp_path):
    src = write_rollouts(tmp_path / "r.jsonl", [A], [B], extra="not json\n")
    steps = read_steps(str(src))
    assert next(steps)[0] == 1 and next(steps)[0] == 3  # served before the bad line 4 is read
    with pytest.raises(RolloutsError, match=r"r.jsonl:4: invalid JSON"):
        next(steps)


def test_help_explains_the_numbers():
    out = run("--help")
    assert out.returncode == 0
    for phrase in (
        "best changed",
        "SET of best",
        "Spearman (primary)",
        "flat groups",
        "--run-advantage",
        "dr_grpo",
        "FILE:LINE",
    ):
        assert phrase in out.stdout, phrase
