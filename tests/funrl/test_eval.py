"""funrl.eval: hand-computed metrics (checked against jiwer independently), the before/after table,
report files, and ``python -m funrl.eval`` end to end on a tiny model + the small demo data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch

from funrl.eval import EvalReport, clip_results, clips_path, evaluate, format_table, summarise, write_report
from policy.messages import Clip, PromptBatch, RolloutBatch

ROOT = Path(__file__).resolve().parents[2]

# (clip, hypothesis); the comments give the hand-computed token errors / reference tokens.
CASES = [
    (Clip("/a/1.wav", "The cat sat on the mat.", "en"), "the cat sit on mat"),  # S1 D1 / 6
    (
        Clip("/a/2.wav", "the walrus eats soup", "en", keywords=("Walrus", "gondola")),
        "the walrus eat soup and",
    ),  # S1 I1 / 4; kw 1/1
    (
        Clip("/a/3.wav", "I love New York", "en", keywords=("new york",), context="new york"),
        "i love new work",
    ),  # S1 / 4; kw 0/1, with context
    (
        Clip("/a/4.wav", "the house is big and the garden is small", "en"),
        "das haus ist groß und der garten ist klein",
    ),  # S9 / 9; German
    (Clip("/a/5.wav", "我爱北京", "zh"), "我爱背景"),  # S2 / 4
    (Clip("/a/6.wav", "今天天气好", "zh"), "today is good"),  # S3 D2 / 5; English
    (Clip("/a/7.wav", "你好", None), "你好"),  # no lang: CER by script
    (Clip("/a/8.wav", ""), ""),  # noise, silent
    (Clip("/a/9.wav", ""), "Thank you."),  # noise, hallucinated
    (Clip("/a/10.wav", ""), "..."),  # noise, no token
]


def _records():
    clips, hyps = zip(*CASES)
    return clip_results(list(clips), list(hyps))


def _norm(text: str) -> str:
    """An independent normaliser for the Latin cases: lower-case, punctuation removed."""
    return jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()])(
        text
    )


def test_per_clip_records_count_token_errors_keywords_and_language():
    recs = _records()
    assert [(r["errors"], r["words"]) for r in recs] == [
        (2, 6),
        (2, 4),
        (1, 4),
        (9, 9),
        (2, 4),
        (5, 5),
        (0, 2),
        (0, 0),
        (2, 0),
        (0, 0),
    ]
    assert [(r["substitutions"], r["deletions"], r["insertions"]) for r in recs[:2]] == [(1, 1, 0), (1, 0, 1)]
    assert [r["metric"] for r in recs] == ["wer"] * 4 + ["cer"] * 3 + [None] * 3
    assert recs[1]["keywords_ref"] == ["Walrus"] and recs[1]["keywords_hit"] == ["Walrus"]  # gondola not in ref
    assert recs[2]["keywords_ref"] == ["new york"] and recs[2]["keywords_hit"] == []
    assert [r["context"] for r in recs] == [False, False, True] + [False] * 7
    assert [r["hallucinated"] for r in recs] == [None] * 7 + [False, True, False]
    assert [r["lang_mismatch"] for r in recs] == [False, False, False, True, False, True, None, None, None, None]
    assert recs[5]["hyp_lang"] == "latin?" and recs[4]["hyp_lang"] == "zh"
    assert recs[0]["ref"] == "The cat sat on the mat." and recs[0]["hyp"] == "the cat sit on mat"
    assert set(recs[0]["rewards"]) >= {"wer", "keyword", "hallucination", "language", "total"}
    json.dumps(recs)  # JSON-ready


def test_summary_rates_match_hand_counts():
    rep = summarise(_records())
    assert rep.num_clips == 10 and rep.num_noise_clips == 3
    assert rep.wer == pytest.approx((2 + 2 + 1 + 9) / (6 + 4 + 4 + 9)) and rep.num_words == 23
    assert rep.cer == pytest.approx((2 + 5 + 0) / (4 + 5 + 2)) and rep.num_chars == 11
    assert rep.keyword_recall == pytest.approx(1 / 2) and rep.num_keywords == 2
    assert rep.keyword_recall_context == 0.0 and rep.num_keywords_context == 1  # clip 3 alone had context
    assert rep.hallucination_rate == pytest.approx(1 / 3)
    assert rep.lang_mismatch_rate == pytest.approx(2 / 6) and rep.num_lang_checked == 6


def test_wer_equals_jiwer_corpus_wer_on_independently_normalised_text():
    latin = [(c, h) for c, h in CASES if c.lang == "en"]
    expected = jiwer.wer([_norm(c.text) for c, _ in latin], [_norm(h) for _, h in latin])
    assert summarise(clip_results(*map(list, zip(*latin)))).wer == pytest.approx(expected)


def test_cer_equals_jiwer_cer_on_chinese_clips():
    zh = [
        (Clip("/z/1.wav", "我爱北京天安门", "zh"), "我爱北京"),
        (Clip("/z/2.wav", "今天天气很好", "cmn"), "今天天汽很好吗"),
    ]
    expected = jiwer.cer([c.text for c, _ in zh], [h for _, h in zh])
    rep = summarise(clip_results(*map(list, zip(*zh))))
    assert rep.wer is None and rep.cer == pytest.approx(expected) == pytest.approx((3 + 2) / 13)


def test_rates_without_their_kind_of_clip_are_none():
    rep = summarise(clip_results([Clip("/a.wav", "hello there")], ["hello"]))
    assert rep.wer == pytest.approx(0.5)
    assert (rep.cer, rep.keyword_recall, rep.hallucination_rate, rep.lang_mismatch_rate) == (None,) * 4
    with pytest.raises(ValueError, match="2 clips but 1"):
        clip_results([Clip("/a.wav", "a"), Clip("/b.wav", "b")], ["a"])


def _report(**kw) -> EvalReport:
    base = dict(
        num_clips=10,
        wer=0.5,
        cer=None,
        keyword_recall=0.4,
        hallucination_rate=1.0,
        lang_mismatch_rate=0.0,
        num_noise_clips=2,
        num_keywords=5,
    )
    return EvalReport(**{**base, **kw})


def test_format_table_two_columns_adds_relative_change():
    table = format_table({"before": _report(), "after": _report(wer=0.4, keyword_recall=0.5, hallucination_rate=0.25)})
    rows = {line[:34].strip(): line[34:].split() for line in table.splitlines()}
    assert rows["metric"] == ["before", "after", "rel.", "change"]
    assert rows["WER"] == ["50.00%", "40.00%", "-20.0%"]
    assert rows["CER (zh)"] == ["-", "-", "-"]
    assert rows["keyword recall"] == ["40.00%", "50.00%", "+25.0%"]
    assert rows["hallucination rate (noise clips)"] == ["100.00%", "25.00%", "-75.0%"]
    assert rows["language mismatch rate"] == ["0.00%", "0.00%", "-"]  # no change from a zero base


def test_format_table_other_column_counts_have_no_relative_change():
    one = format_table({"model": _report()}).splitlines()
    three = format_table({"a": _report(), "b": _report(), "c": _report()}).splitlines()
    assert len(one) == len(three) == 6  # no report has keyword recall on clips with context: no row for it
    assert len(format_table({"model": _report(keyword_recall_context=0.5)}).splitlines()) == 7
    assert one[0].split() == ["metric", "model"] and three[0].split() == ["metric", "a", "b", "c"]
    assert "rel." not in "\n".join(one + three)


def test_write_report_writes_both_files_atomically_and_records_resummarise(tmp_path):
    recs = _records()
    rep = summarise(recs)
    out = tmp_path / "sub" / "report.json"
    write_report(rep, recs, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.clips.jsonl", "report.json"]  # no temp left
    assert clips_path(out) == out.parent / "report.clips.jsonl"
    assert EvalReport(**json.loads(out.read_text())) == rep
    back = [json.loads(line) for line in clips_path(out).read_text(encoding="utf-8").splitlines()]
    assert back == recs and summarise(back) == rep


def test_evaluate_batches_in_order_and_uses_the_first_hypothesis():
    clips = [Clip(f"/c/{i}.wav", f"word{i}") for i in range(7)]
    sizes = []

    def embed(batch):
        sizes.append(len(batch))
        return PromptBatch(clips=tuple(batch), prompt_embeds=tuple(torch.zeros(2, 4) for _ in batch))

    def generate(prompts):
        B = len(prompts.clips)
        z = torch.zeros(B, 2, 1)
        texts = tuple((c.text, "other") for c in prompts.clips)
        return RolloutBatch(prompts=prompts, token_ids=z.long(), mask=z, sample_logprobs=z, texts=texts)

    rep, recs = evaluate(embed, generate, clips, batch_size=3, progress=False)
    assert sizes == [3, 3, 1]
    assert [r["hyp"] for r in recs] == [c.text for c in clips] and rep.wer == 0.0
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(embed, generate, clips, batch_size=0)


def test_report_has_the_public_fields():
    names = [f.name for f in fields(EvalReport)]
    assert names[:8] == [
        "num_clips",
        "wer",
        "cer",
        "keyword_recall",
        "hallucination_rate",
        "lang_mismatch_rate",
        "num_noise_clips",
        "num_keywords",
    ]


# ------------------------------------------------------------------------------------------- CLI


def run_eval(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "funrl.eval", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def wav(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000)
    return path


def test_cli_bad_manifest_line_exits_2_naming_the_line(tmp_path, wav):
    man = tmp_path / "m.jsonl"
    man.write_text(
        json.dumps({"audio": wav.name, "text": "hi"}) + "\n" + json.dumps({"audio": wav.name}) + "\n" + "{not json\n"
    )
    out = run_eval("--model", tmp_path / "no_model", "--manifest", man, "--out", tmp_path / "r.json")
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{man}:2: text: missing" in lines[0] and f"{man}:3: json" in lines[0]
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("config,expect", [(None, "no such folder"), ({"model_type": "nope"}, "unknown model_type")])
def test_cli_missing_or_unsupported_model_exits_2(tmp_path, wav, config, expect):
    man = tmp_path / "m.jsonl"
    man.write_text(json.dumps({"audio": wav.name, "text": "hi"}) + "\n")
    model = tmp_path / "model"
    if config is not None:
        model.mkdir()
        (model / "config.json").write_text(json.dumps(config))
    out = run_eval("--model", model, "--manifest", man)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and expect in lines[0], out.stderr


def test_cli_unreadable_audio_exits_2_naming_file_and_line(tmp_path, wav):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    man = tmp_path / "m.jsonl"
    man.write_text(json.dumps({"audio": wav.name, "text": "hi"}) + "\n" + json.dumps({"audio": "bad.wav", "text": "x"}))
    out = run_eval("--model", tmp_path, "--manifest", man)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and f"{man}:2" in lines[0] and str(bad) in lines[0]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from policy.models import get_adapter

    return get_adapter("encoder_adapter_llm").build_tiny(tmp_path_factory.mktemp("eval_parts") / "tiny", seed=0)


# (what is deleted from the encoder_adapter_llm folder, the path the error must name)
MISSING_PARTS = [
    (["frontend.safetensors"], "frontend.safetensors"),
    (["llm"], "llm"),
    (["llm/model.safetensors"], "llm"),
    (["llm/tokenizer.json"], "llm"),  # transformers builds an empty tokenizer
    (["llm/tokenizer.json", "llm/tokenizer_config.json", "llm/chat_template.jinja"], "llm"),
]


@pytest.mark.parametrize("delete,named", MISSING_PARTS, ids=[" + ".join(d) for d, _ in MISSING_PARTS])
def test_cli_model_folder_missing_a_part_exits_2_naming_it_before_decoding(
    tmp_path, wav, tiny_checkpoint, capsys, delete, named
):
    import shutil

    from funrl.eval import main

    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    for rel in delete:
        (shutil.rmtree if (model / rel).is_dir() else os.remove)(model / rel)
    man = tmp_path / "m.jsonl"
    man.write_text(json.dumps({"audio": wav.name, "text": "hi"}) + "\n")
    out = tmp_path / "r.json"
    code = main(["--model", str(model), "--manifest", str(man), "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, captured.err[-3000:]
    assert lines[0].startswith(f"error: --model {model}: ") and str(model / named) in lines[0]
    assert "tokenizer" in lines[0] if "tokenizer.json" in delete else True
    assert captured.out == "" and not out.exists() and not clips_path(out).exists()


MAX_NEW = 8


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    from funrl.demo.build import build_demo_data
    from funrl.demo.plan import DemoSizes
    from policy.models import get_adapter

    root = tmp_path_factory.mktemp("eval_cli")
    model = get_adapter("encoder_adapter_llm").build_tiny(root / "tiny", llm="qwen2", seed=0)
    data = build_demo_data(root / "demo", seed=0, sizes=DemoSizes.small(), workers=1, progress=False)
    out = root / "out" / "report.json"
    proc = run_eval("--model", model, "--manifest", data.test, "--out", out, "--batch", 8, "--max-new-tokens", MAX_NEW)
    return proc, model, data.test, out


@pytest.mark.vllm
@pytest.mark.slow
def test_cli_end_to_end_writes_report_per_clip_lines_and_table(cli_run):
    from funrl.data import load_manifest

    proc, _, manifest, out = cli_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    clips = load_manifest(manifest)
    report = json.loads(out.read_text())
    assert set(report) == {f.name for f in fields(EvalReport)}
    assert report["num_clips"] == len(clips)
    assert report["num_noise_clips"] == sum(c.text == "" for c in clips) > 0
    for key in ("wer", "cer", "hallucination_rate", "lang_mismatch_rate"):
        assert isinstance(report[key], float) and report[key] >= 0
    lines = clips_path(out).read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(clips)
    recs = [json.loads(line) for line in lines]
    assert [r["ref"] for r in recs] == [c.text for c in clips]
    assert EvalReport(**report) == summarise(recs)
    assert "WER" in proc.stdout and "hallucination rate" in proc.stdout
    assert "eval" in proc.stderr and "batch" in proc.stderr  # the progress bar


@pytest.mark.vllm
@pytest.mark.slow
def test_cli_greedy_hypotheses_equal_model_layer_argmax_decoding(cli_run):
    """Independent of vLLM: embed with the model layer, decode by argmax of its own forward."""
    from funrl.data import load_manifest
    from policy.models import load_audio_llm
    from policy.models.audio import load_audio

    proc, model_dir, manifest, out = cli_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(line) for line in clips_path(out).read_text(encoding="utf-8").splitlines()]
    clips = load_manifest(manifest)
    pick = sorted(
        {
            0,
            next(i for i, c in enumerate(clips) if c.text == ""),
            next((i for i, c in enumerate(clips) if c.context), 1),
        }
    )
    model = load_audio_llm(model_dir).eval()
    eos = set(model.eos_token_ids)
    with torch.no_grad():
        feats = model.audio_features([load_audio(clips[i].audio) for i in pick])
        prompts = model.build_prompt_embeds(model.embed_audio(feats), [clips[i].context for i in pick])
        table = model.llm.get_input_embeddings()
        for i, prompt in zip(pick, prompts):
            ids: list[int] = []
            best: list[float] = []
            while len(ids) < MAX_NEW and not (ids and ids[-1] in eos):
                x = torch.cat([prompt, table(torch.tensor(ids, dtype=torch.long))])[None]
                logp = model.llm(inputs_embeds=x, use_cache=False).logits[0, -1].float().log_softmax(-1)
                ids.append(int(logp.argmax()))
                best.append(float(logp.max()))
            # the model layer's scoring path agrees: every chosen token has the step's top log-prob
            lp = model.sequence_logprobs([prompt], torch.tensor([ids]))[0]
            assert lp.tolist() == pytest.approx(best, abs=1e-4)
            hyp = model.tokenizer.decode(ids, skip_special_tokens=True)
            assert recs[i]["hyp"] == hyp, (i, ids)
    assert any(recs[i]["hyp"] for i in pick)  # not a vacuous comparison of empty outputs
