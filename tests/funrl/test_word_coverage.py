"""scripts/word_coverage.py: reference words written right, bucketed by their count in the training text."""

from __future__ import annotations

import json
from collections import Counter

from script_loader import load_script


def _script():
    return load_script("word_coverage")


def test_kept_words_marks_the_words_the_alignment_keeps() -> None:
    wc = _script()
    # "please enter your password" -> "place enter the password": please substituted, your substituted
    assert wc.kept_words("Please enter your password.", "place enter the password") == [
        ("please", False),
        ("enter", True),
        ("your", False),
        ("password", True),
    ]
    assert wc.kept_words("Agent logged off.", "") == [("agent", False), ("logged", False), ("off", False)]
    assert wc.kept_words("", "some text") == []


def test_coverage_table_counts_speech_words_by_training_count_and_skips_noise_clips(tmp_path) -> None:
    wc = _script()
    train = tmp_path / "train.jsonl"
    lines = [{"audio": "a.wav", "text": "enter the key"}, {"audio": "b.wav", "text": "Enter, enter!"}]
    train.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    counts = wc.text_counts([train])
    assert counts == Counter({"enter": 3, "the": 1, "key": 1})
    rows = [
        {"ref": "enter the pound key", "hyp": "enter a town key", "noise": False},  # enter 3x, the/key 1x, pound 0x
        {"ref": "", "hyp": "enter", "noise": True},
    ]
    table = wc.coverage_table(rows, counts)
    assert table == {"0": (1, 0), "1-2": (2, 1), "3-9": (1, 1), "10-99": (0, 0), "100+": (0, 0)}


def test_main_prints_the_table_and_refuses_a_missing_file(tmp_path, capsys) -> None:
    wc = _script()
    clips, train = tmp_path / "r.clips.jsonl", tmp_path / "t.jsonl"
    clips.write_text(json.dumps({"ref": "a cat", "hyp": "a cat", "noise": False}) + "\n")
    train.write_text(json.dumps({"audio": "a.wav", "text": "a cat"}) + "\n")
    assert wc.main([str(clips), str(train)]) == 0
    assert "| 1-2 | 100.0 % (2) | 100.0 % |" in capsys.readouterr().out
    assert wc.main([str(clips), str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err


def test_main_names_the_file_and_line_of_a_bad_training_manifest_line(tmp_path, capsys) -> None:
    wc = _script()
    clips, train = tmp_path / "r.clips.jsonl", tmp_path / "t.jsonl"
    clips.write_text(json.dumps({"ref": "a cat", "hyp": "a cat", "noise": False}) + "\n")
    train.write_text(json.dumps({"audio": "a.wav", "text": "a cat"}) + "\n{not json\n")
    assert wc.main([str(clips), str(train)]) == 2
    assert f"{train}:2:" in capsys.readouterr().err
