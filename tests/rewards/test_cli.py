"""``python -m rewards`` through a real subprocess: output, --out atomicity, and one-line errors (exit 2)."""

import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOOD = [
    {"hyp": "Hello world", "ref": "hello, world!", "lang": "en", "keywords": ["world"]},
    {"hyp": "我爱北京", "ref": "我爱北京天安门", "lang": "zh"},
    {"hyp": "thank you", "ref": ""},
]


def run(*args, cwd=None, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "rewards", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        input=stdin,
        timeout=60,
    )


def write_jsonl(path: Path, items, extra_lines=()):
    path.write_text(
        "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items) + "".join(extra_lines), encoding="utf-8"
    )
    return path


def test_score_writes_one_object_per_line_in_order_and_a_summary(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", GOOD[:1], ["\n"])  # a blank line is skipped
    with src.open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(it, ensure_ascii=False) + "\n" for it in GOOD[1:])
    out = run("score", src)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows == [
        {"wer": 1.0, "keyword": 1.0, "hallucination": 0.0, "language": 0.0, "total": 2.0},
        {
            "wer": pytest.approx(4 / 7),
            "keyword": None,
            "hallucination": 0.0,
            "language": 0.0,
            "total": pytest.approx(4 / 7),
        },
        {"wer": 0.0, "keyword": None, "hallucination": -1.0, "language": 0.0, "total": -1.0},
    ]
    table = out.stderr.splitlines()
    assert table[0].split() == ["reward", "count", "mean", "std"]
    wers = [1.0, 4 / 7, 0.0]  # population std, by the stdlib
    assert table[1].split() == ["wer", "3", f"{statistics.mean(wers):.4f}", f"{statistics.pstdev(wers):.4f}"]
    assert table[2].split() == ["keyword", "1", "1.0000", "0.0000"]


def test_score_with_weights_and_stdin(tmp_path):
    text = "".join(json.dumps(it) + "\n" for it in GOOD)
    out = run("score", "-", "--weights", "wer=2, hallucination=0.5", stdin=text)
    assert out.returncode == 0, out.stderr
    totals = [json.loads(line)["total"] for line in out.stdout.splitlines()]
    assert totals == pytest.approx([2.0, 8 / 7, -0.5])


def test_out_file_is_written_and_replaced(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", GOOD)
    dst = tmp_path / "scores.jsonl"
    dst.write_text("old\n")
    out = run("score", src, "--out", dst)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    assert len(dst.read_text().splitlines()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "scores.jsonl"]  # no temp file left
    assert dst.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open(path, "w") makes it, not 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_bad_line_leaves_existing_out_file_untouched(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", GOOD, ['{"hyp": "a", "ref": \n'])
    dst = tmp_path / "scores.jsonl"
    dst.write_text("previous results\n")
    out = run("score", src, "--out", dst)
    assert out.returncode == 2
    assert dst.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "scores.jsonl"]
    assert out.stdout == ""
    assert "line 4" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"hyp": "a", "ref": \n', r"line 2: invalid JSON"),
        ('["hyp", "ref"]\n', r"line 2: expected a JSON object, got list"),
        ('{"ref": "a"}\n', r"line 2: missing 'hyp'"),
        ('{"hyp": "a"}\n', r"line 2: missing 'ref'"),
        ('{"hyp": 3, "ref": "a"}\n', r"line 2: 'hyp' must be a string, got int"),
        ('{"hyp": "a", "ref": null}\n', r"line 2: 'ref' must be a string, got NoneType"),
        ('{"hyp": "a", "ref": "a", "lang": 7}\n', r"line 2: 'lang' must be a string"),
        ('{"hyp": "a", "ref": "a", "keywords": "x"}\n', r"line 2: 'keywords' must be a list of strings"),
        ('{"hyp": "a", "ref": "a", "keywords": ["x", 1]}\n', r"line 2: 'keywords' must be a list of strings"),
    ],
)
def test_bad_line_exits_2_with_one_line_naming_the_line(tmp_path, bad_line, message):
    src = write_jsonl(tmp_path / "in.jsonl", GOOD[:1], [bad_line])
    out = run("score", src)
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1
    assert str(src) in out.stderr
    assert re.search(message, out.stderr), out.stderr


def test_invalid_utf8_line_is_named(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"hyp": "a", "ref": "a"}\n{"hyp": "\xff", "ref": "a"}\n')
    out = run("score", src)
    assert out.returncode == 2 and "line 2: not valid UTF-8" in out.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--weights", "wer=1,foo=2"], "unknown reward 'foo'"),
        (["--weights", "wer=abc"], "weight of 'wer' is not a number: 'abc'"),
        (["--weights", "wer"], "bad entry 'wer'"),
        (["--weights", "wer=nan"], "must be finite"),
        (["--weights", "wer=1,wer=2"], "'wer' is given twice"),
        (["--plugin", "no_such_plugin_mod:f"], "cannot import module 'no_such_plugin_mod'"),
        (["--plugin", "cli_plugin:NOT_CALLABLE"], "'NOT_CALLABLE' is a int, not a callable"),
        (["--plugin", "cli_plugin:absent"], "has no attribute 'absent'"),
        (["--out", "no/such/folder/x.jsonl"], "folder no/such/folder does not exist"),
        (["--out", "."], "--out: . is a folder; give a file path"),
    ],
)
def test_bad_option_exits_2_with_one_line_naming_it(tmp_path, args, message):
    src = write_jsonl(tmp_path / "in.jsonl", GOOD)
    (tmp_path / "cli_plugin.py").write_text("NOT_CALLABLE = 3\n")
    out = run("score", src, *args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_missing_input_file_exits_2_with_the_path(tmp_path):
    out = run("score", tmp_path / "absent.jsonl")
    assert out.returncode == 2
    assert f"input file not found: {tmp_path / 'absent.jsonl'}" in out.stderr


def test_plugin_is_scored_and_listed(tmp_path):
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent("""
        def brevity(hyps, refs, metas):
            return [-0.1 * len(h.split()) for h in hyps]
    """)
    )
    src = write_jsonl(tmp_path / "in.jsonl", GOOD)
    out = run("score", src, "--plugin", "my_rewards:brevity", "--weights", "brevity=1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["total"] for r in rows] == pytest.approx([-0.2, -0.1, -0.2])
    assert list(rows[0]) == ["brevity", "total"]  # the rewards of weight 0 are not run
    listed = run("list", "--plugin", "my_rewards:brevity", cwd=tmp_path)
    assert listed.stdout.split() == ["wer", "keyword", "hallucination", "language", "brevity"]


def test_plugin_raising_while_scoring_exits_1_naming_it(tmp_path):
    (tmp_path / "bad_rewards.py").write_text("def crash(h, r, m):\n    raise KeyError('lang')\n")
    out = run("score", write_jsonl(tmp_path / "in.jsonl", GOOD), "--plugin", "bad_rewards:crash", cwd=tmp_path)
    assert out.returncode == 1
    assert "reward 'crash' failed: KeyError" in out.stderr and "Traceback" not in out.stderr


SHAKY = "def shaky(hyps, refs, metas):\n    return [float('nan') if h == 'thank you' else 0.5 for h in hyps]\n"


def strict_json(line: str) -> dict:
    def refuse(token):
        raise ValueError(f"non-JSON token {token}")

    return json.loads(line, parse_constant=refuse)


def test_non_finite_reward_exits_1_naming_reward_and_line_and_writes_nothing(tmp_path):
    (tmp_path / "shaky_rewards.py").write_text(SHAKY)
    src = write_jsonl(tmp_path / "in.jsonl", GOOD[:1], ["\n"])  # blank line 2: "thank you" is on line 4
    with src.open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(it, ensure_ascii=False) + "\n" for it in GOOD[1:])
    dst = tmp_path / "scores.jsonl"
    out = run("score", src, "--plugin", "shaky_rewards:shaky", "--out", dst, cwd=tmp_path)
    assert out.returncode == 1 and out.stdout == "" and not dst.exists()
    assert out.stderr.strip().splitlines() == [
        f"rewards: error: reward 'shaky' returned NaN for clip 2 (ref '', hyp 'thank you'); a reward must be a "
        f"finite number or None ({src}, line 4); --allow-nonfinite writes it as null"
    ]


def test_allow_nonfinite_writes_null_as_valid_json_and_exits_0(tmp_path):
    (tmp_path / "shaky_rewards.py").write_text(SHAKY)
    src = write_jsonl(tmp_path / "in.jsonl", GOOD)
    out = run(
        "score", src, "--plugin", "shaky_rewards:shaky", "--weights", "wer=1,shaky=2", "--allow-nonfinite", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    rows = [strict_json(line) for line in out.stdout.splitlines()]
    assert rows == [
        {"wer": 1.0, "shaky": 0.5, "total": 2.0},
        {"wer": pytest.approx(4 / 7), "shaky": 0.5, "total": pytest.approx(4 / 7 + 1)},
        {"wer": 0.0, "shaky": None, "total": None},
    ]
    assert "rewards: warning: 2 non-finite values written as null: shaky on line 3, total on line 3" in out.stderr


def test_reward_of_weight_zero_is_not_run_by_the_cli(tmp_path):
    (tmp_path / "bad_rewards.py").write_text("def crash(h, r, m):\n    raise KeyError('lang')\n")
    out = run(
        "score",
        write_jsonl(tmp_path / "in.jsonl", GOOD),
        "--plugin",
        "bad_rewards:crash",
        "--weights",
        "wer=1,crash=0",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert [strict_json(line) for line in out.stdout.splitlines()] == [
        {"wer": 1.0, "total": 1.0},
        {"wer": pytest.approx(4 / 7), "total": pytest.approx(4 / 7)},
        {"wer": 0.0, "total": 0.0},
    ]


def test_plugin_returning_a_number_exits_1_with_one_line(tmp_path):
    (tmp_path / "num_rewards.py").write_text("def constant(h, r, m):\n    return 1.0\n")
    out = run("score", write_jsonl(tmp_path / "in.jsonl", GOOD), "--plugin", "num_rewards:constant", cwd=tmp_path)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "rewards: error: reward 'constant' returned a float (1.0), not a list of 3 values (one float or None per clip)"
    ]


def test_list_and_help():
    out = run("list")
    assert out.returncode == 0 and out.stdout.split() == ["wer", "keyword", "hallucination", "language"]
    verbose = run("list", "-v")
    assert verbose.stdout.splitlines()[0].startswith("wer\tR1")
    helped = run("score", "--help")
    assert helped.returncode == 0
    for needle in (
        "--weights",
        "--plugin",
        "--out",
        "--allow-nonfinite",
        '"hyp": str',
        "exit codes",
        "weight 0 are not run",
    ):
        assert needle in helped.stdout
