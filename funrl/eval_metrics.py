"""The ASR metrics of `python -m funrl.eval` (its module documentation defines them): per-clip records, their
summary (`EvalReport`), the before/after table and the report files. No model, no decoding: what a training run's
evaluations and the benchmark scripts share.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import jiwer

from funrl.data import write_text_atomic
from policy.messages import Clip
from rewards import score_batch
from rewards.language import detect_language, expected_class, language_mismatch
from rewards.text import check_normalizer, token_string, tokens

_SPLIT = jiwer.ReduceToListOfListOfWords()
ROWS = (
    ("WER", "wer"),
    ("CER (zh)", "cer"),
    ("keyword recall", "keyword_recall"),
    ("  of it, clips with context", "keyword_recall_context"),
    ("hallucination rate (noise clips)", "hallucination_rate"),
    ("language mismatch rate", "lang_mismatch_rate"),
)
OPTIONAL_ROWS = {"keyword_recall_context"}  # left out of a table where no report has a value


@dataclass(frozen=True)
class EvalReport:
    """Summary of one evaluation; a rate is None when no clip of its kind was seen."""

    num_clips: int
    wer: float | None
    cer: float | None
    keyword_recall: float | None
    hallucination_rate: float | None
    lang_mismatch_rate: float | None
    num_noise_clips: int
    num_keywords: int  # reference keywords (denominator of keyword_recall)
    num_words: int = 0  # reference tokens of the WER clips (denominator of wer)
    num_chars: int = 0  # reference tokens of the CER clips (denominator of cer)
    num_lang_checked: int = 0  # speech clips with a known language (denominator of lang_mismatch_rate)
    normalizer: str = "basic"  # the text normaliser of the counts (rewards.text.NORMALIZERS)
    # keyword recall on the clips whose prompt carried context (the keywords, as the demo gives them): what
    # the model makes of the context, apart from what it hears
    keyword_recall_context: float | None = None
    num_keywords_context: int = 0

    def as_metrics(self, prefix: str = "eval.") -> dict[str, float]:
        return {
            prefix + k: float(v)
            for k, v in asdict(self).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }


# ------------------------------------------------------------------------------------ per clip


def _alignment_counts(refs: list[tuple[str, ...]], hyps: list[tuple[str, ...]]) -> list[tuple[int, int, int]]:
    """(substitutions, deletions, insertions) per pair of non-empty reference token lists (jiwer)."""
    if not refs:
        return []
    out = jiwer.process_words(
        [" ".join(r) for r in refs],
        [" ".join(h) for h in hyps],
        reference_transform=_SPLIT,
        hypothesis_transform=_SPLIT,
    )
    counts = []
    for chunks in out.alignments:
        s = d = i = 0
        for c in chunks:
            if c.type == "substitute":
                s += c.ref_end_idx - c.ref_start_idx
            elif c.type == "delete":
                d += c.ref_end_idx - c.ref_start_idx
            elif c.type == "insert":
                i += c.hyp_end_idx - c.hyp_start_idx
        counts.append((s, d, i))
    return counts


def _metric_of(clip: Clip) -> str:
    """'cer' for a Chinese clip (by ``lang``, else by the reference's script), 'wer' otherwise."""
    want = expected_class(clip.lang)
    if want is None and not clip.lang:
        want = detect_language(clip.text)
    return "cer" if want == "zh" else "wer"


def _keywords_in(keywords: Sequence[str], text_tokens: tuple[str, ...], normalizer: str = "basic") -> list[str]:
    """The keywords (first spelling of each normalised form) whose tokens are a contiguous run of the text's."""
    joined = token_string(text_tokens)
    seen, out = set(), []
    for k in keywords:
        key = token_string(tokens(k, normalizer))
        if key.strip() and key not in seen and key in joined:
            seen.add(key)
            out.append(k)
    return out


def clip_results(clips: Sequence[Clip], hyps: Sequence[str], normalizer: str = "basic") -> list[dict]:
    """One JSON-ready record per clip: ref, hyp, token errors, keyword hits, language check, rewards.

    ``metric`` is "wer", "cer" or None (noise-only clip: no ``basic`` token in the reference); ``errors`` =
    S + D + I and ``words`` = N_ref on the tokens under ``normalizer`` (a noise clip: errors = hypothesis
    tokens, words = 0).
    """
    if len(clips) != len(hyps):
        raise ValueError(f"clip_results: {len(clips)} clips but {len(hyps)} hypotheses")
    check_normalizer(normalizer)
    ref_t = [tokens(c.text, normalizer) for c in clips]
    hyp_t = [tokens(h, normalizer) for h in hyps]
    speech = [i for i, r in enumerate(ref_t) if r]
    counts = dict(zip(speech, _alignment_counts([ref_t[i] for i in speech], [hyp_t[i] for i in speech])))
    scores = score_batch(list(hyps), [c.text for c in clips], [c.meta() for c in clips], normalizer=normalizer)
    records = []
    for i, (clip, hyp, score) in enumerate(zip(clips, hyps, scores)):
        noise = not tokens(clip.text)
        s, d, ins = counts.get(i, (0, 0, len(hyp_t[i])))
        kw_ref = _keywords_in(clip.keywords, ref_t[i], normalizer)
        kw_hit = _keywords_in(kw_ref, hyp_t[i], normalizer)
        checked = not noise and expected_class(clip.lang) is not None
        records.append(
            {
                "audio": clip.audio,
                "line": clip.line,
                "lang": clip.lang,
                "ref": clip.text,
                "hyp": hyp,
                "metric": None if noise else _metric_of(clip),
                "errors": s + d + ins,
                "words": len(ref_t[i]),
                "substitutions": s,
                "deletions": d,
                "insertions": ins,
                "noise": noise,
                "hallucinated": bool(tokens(hyp)) if noise else None,
                "normalizer": normalizer,
                "keywords": list(clip.keywords),
                "keywords_ref": kw_ref,
                "keywords_hit": kw_hit,
                "context": bool(clip.context),
                "hyp_lang": detect_language(hyp),
                "lang_mismatch": language_mismatch(hyp, clip.lang) if checked else None,
                "rewards": score,
            }
        )
    return records


def summarise(records: Sequence[dict]) -> EvalReport:
    """Corpus-level metrics of `clip_results` records (also of records read back from the JSONL)."""

    def rate(num: float, den: float) -> float | None:
        return num / den if den else None

    by_metric = {m: [r for r in records if r["metric"] == m] for m in ("wer", "cer")}
    words = {m: sum(r["words"] for r in rs) for m, rs in by_metric.items()}
    errors = {m: sum(r["errors"] for r in rs) for m, rs in by_metric.items()}
    noise = [r for r in records if r["noise"]]
    checked = [r for r in records if r["lang_mismatch"] is not None]
    kw_total = sum(len(r["keywords_ref"]) for r in records)
    with_ctx = [r for r in records if r.get("context")]
    kw_ctx = sum(len(r["keywords_ref"]) for r in with_ctx)
    return EvalReport(
        num_clips=len(records),
        wer=rate(errors["wer"], words["wer"]),
        cer=rate(errors["cer"], words["cer"]),
        keyword_recall=rate(sum(len(r["keywords_hit"]) for r in records), kw_total),
        hallucination_rate=rate(sum(bool(r["hallucinated"]) for r in noise), len(noise)),
        lang_mismatch_rate=rate(sum(bool(r["lang_mismatch"]) for r in checked), len(checked)),
        num_noise_clips=len(noise),
        num_keywords=kw_total,
        num_words=words["wer"],
        num_chars=words["cer"],
        num_lang_checked=len(checked),
        normalizer=records[0].get("normalizer", "basic") if records else "basic",
        keyword_recall_context=rate(sum(len(r["keywords_hit"]) for r in with_ctx), kw_ctx),
        num_keywords_context=kw_ctx,
    )


# ------------------------------------------------------------------------------------------ output


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _rel(before: float | None, after: float | None) -> str:
    if before is None or after is None or before == 0:
        return "-"
    return f"{100 * (after - before) / before:+.1f}%"


def format_table(columns: dict[str, EvalReport]) -> str:
    """Plain-text table, one column per report (e.g. before / after), rates in percent; with
    exactly two columns a last column gives the relative change (after - before) / before."""
    names = list(columns)
    heads = names + (["rel. change"] if len(names) == 2 else [])
    width = max(len(label) for label, _ in ROWS) + 2
    col = max([12] + [len(h) + 2 for h in heads])
    lines = ["metric".ljust(width) + "".join(h.rjust(col) for h in heads)]
    for label, key in ROWS:
        vals = [getattr(columns[n], key) for n in names]
        if key in OPTIONAL_ROWS and all(v is None for v in vals):
            continue
        cells = [_fmt(v) for v in vals] + ([_rel(*vals)] if len(names) == 2 else [])
        lines.append(label.ljust(width) + "".join(c.rjust(col) for c in cells))
    return "\n".join(lines)


def clips_path(out: str | os.PathLike) -> Path:
    """Where the per-clip JSONL of report ``out`` goes: ``report.json`` -> ``report.clips.jsonl``."""
    return Path(out).with_suffix(".clips.jsonl")


def write_report(report: EvalReport, records: Sequence[dict], out: str | os.PathLike) -> None:
    """``out`` (summary JSON) and `clips_path(out)` (one JSON line per clip), each written atomically;
    the summary last, so its presence means both are complete."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(clips_path(out), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_text_atomic(out, json.dumps(asdict(report), indent=1) + "\n")
