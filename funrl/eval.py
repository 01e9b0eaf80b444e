"""``python -m funrl.eval``: greedy batched decoding with vLLM and ASR metrics.

    python -m funrl.eval --model DIR --manifest test.jsonl [--out report.json] [--batch N] [--max-new-tokens N]

``DIR`` is any checkpoint folder the model layer loads (``policy.models.load_audio_llm``). The
audio-embedding worker and one vLLM engine run in this process (no Ray); decoding is greedy.

Metrics, all on the reward library's normalised tokens (``rewards.text``, docs/design.md#text-normalisation), so they
agree with the rewards a training run optimises. ``--normalizer whisper_en`` (training: ``rewards.normalizer``)
puts the texts of the WER, CER and keyword counts through the Whisper English normaliser first (numbers as digits,
American spellings, contractions expanded), as published English ASR tables do; a clip is noise-only, and an
output on it a hallucination, by the ``basic`` tokens whatever the normaliser:

- ``wer``: corpus WER, sum(S + D + I) / sum(N_ref) over the speech clips that are not Chinese;
- ``cer``: the same over the Chinese clips (``lang`` zh/cmn/yue/...; a clip without ``lang``
  whose reference is detected as Chinese too), where every ideograph is a token, so it is a CER
  (a run of Latin letters inside a Chinese sentence stays one token);
- ``keyword_recall``: of the clip keywords that occur in the reference (contiguous token run),
  the share that also occur in the hypothesis;
- ``hallucination_rate``: share of noise-only clips (reference without tokens, i.e. ``""``)
  whose output has at least one token;
- ``lang_mismatch_rate``: share of speech clips with a known ``lang`` whose output the rewards'
  language detector puts in another language (an empty output is no mismatch).

With ``--out report.json`` the summary goes there and one JSON line per clip (ref, hyp, errors,
words, lang, keywords hit, ...) to ``report.clips.jsonl`` beside it, both written atomically.
A bad manifest, a missing or unsupported model folder, a model folder missing a part (its weights, the
``llm/`` folder, the tokenizer) or an unreadable audio file ends with one line on stderr and exit code 2,
before anything is decoded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import jiwer

from funrl.data import write_text_atomic
from policy.messages import Clip, PromptBatch, RolloutBatch
from rewards import score_batch
from rewards.language import detect_language, expected_class, language_mismatch
from rewards.text import NORMALIZERS, NormalizerError, check_normalizer, token_string, tokens

__all__ = ["EvalReport", "clip_results", "summarise", "evaluate", "format_table", "write_report", "clips_path", "main"]

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


# ---------------------------------------------------------------------------------------- decoding


def evaluate(
    embed: Callable[[list[Clip]], PromptBatch],
    generate: Callable[[PromptBatch], RolloutBatch],
    clips: Sequence[Clip],
    batch_size: int = 16,
    progress: bool = True,
    normalizer: str = "basic",
) -> tuple[EvalReport, list[dict]]:
    """Decode ``clips`` in batches of ``batch_size`` with ``embed`` then ``generate`` (greedy: the
    first hypothesis of each row is used) and score them; returns (summary, per-clip records)."""
    if batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be >= 1, got {batch_size}")
    from tqdm import tqdm

    clips = list(clips)
    hyps: list[str] = []
    starts = range(0, len(clips), batch_size)
    with tqdm(total=len(starts), desc="eval", unit="batch", disable=not progress, dynamic_ncols=True) as bar:
        for start in starts:
            batch = clips[start : start + batch_size]
            rollout = generate(embed(batch))
            if len(rollout.texts) != len(batch):
                raise ValueError(f"evaluate: generate returned {len(rollout.texts)} rows for {len(batch)} clips")
            hyps.extend(row[0] for row in rollout.texts)
            bar.set_postfix(clips=f"{len(hyps)}/{len(clips)}", refresh=False)
            bar.update(1)
    records = clip_results(clips, hyps, normalizer)
    return summarise(records), records


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


# --------------------------------------------------------------------------------------------- CLI


class InputError(Exception):
    """Bad user input: printed as one line, exit code 2."""


def _one_line(exc: BaseException, limit: int = 3) -> str:
    errors = getattr(exc, "errors", None)
    if errors:  # ManifestError: one entry per bad line
        more = f" (+{len(errors) - limit} more)" if len(errors) > limit else ""
        return f"bad manifest: {'; '.join(errors[:limit])}{more}"
    return " ".join(str(exc).split())


def _check_audio(clips: Sequence[Clip], max_seconds: float) -> None:
    """Every audio file readable, decodable, finite and not too long (header first), before any model is
    loaded (`funrl.audio_check`, the checks training runs)."""
    from funrl.audio_check import audio_problem
    from funrl.data import clip_location

    for c in clips:
        why = audio_problem(c, 0.0, max_seconds)
        if why:
            why = why.replace("data.max_audio_seconds", "--max-audio-seconds")
            raise InputError(f"{clip_location(c)}: audio: {why}")


def _kv_bytes_per_token(llm_dir: str, dtype: str) -> int:
    cfg = json.loads((Path(llm_dir) / "config.json").read_text())
    cfg = cfg.get("text_config") or cfg
    heads = int(cfg.get("num_attention_heads", 1))
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    return 2 * int(cfg["num_hidden_layers"]) * kv_heads * head_dim * (4 if dtype == "float32" else 2)


def _max_position(llm_dir: str) -> int | None:
    cfg = json.loads((Path(llm_dir) / "config.json").read_text())
    cfg = cfg.get("text_config") or cfg
    value = cfg.get("max_position_embeddings")
    return int(value) if value else None


def _parser() -> argparse.ArgumentParser:
    from funrl.data_formats import FORMATS

    p = argparse.ArgumentParser(
        prog="python -m funrl.eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint folder any model adapter supports, or a Hub model id "
        "(org/name[@revision]) already in the local Hugging Face cache (never downloaded)",
    )
    p.add_argument(
        "--manifest", required=True, help="JSONL manifest (docs/design.md#data-manifest), or data in --format"
    )
    p.add_argument(
        "--format", default="jsonl", choices=FORMATS, help="format of --manifest (docs/data.md; default jsonl)"
    )
    p.add_argument(
        "--audio-dir",
        default=None,
        help="where audio that is not a whole file (embedded, an excerpt) is written as wav "
        "(default: .funrl_audio beside the data)",
    )
    p.add_argument("--out", help="summary JSON path; per-clip lines go to <out stem>.clips.jsonl beside it")
    p.add_argument("--batch", "--batch-size", dest="batch", type=int, default=16, help="clips per batch (16)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest hypothesis in tokens (64)")
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="prompt (text + audio embeddings) + hypothesis positions; default min(2048, the LLM's)",
    )
    p.add_argument("--max-audio-seconds", type=float, default=30.0, help="longest clip accepted (30)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--normalizer",
        choices=NORMALIZERS,
        default="basic",
        help="text normaliser of the counts: basic (default) or whisper_en (Whisper's English "
        "normaliser, as published ASR tables; training: rewards.normalizer)",
    )
    return p


def _checked_inputs(args: argparse.Namespace) -> tuple[list[Clip], Path]:
    """The manifest's clips and the local model folder, after every argument, audio file and the model folder are
    checked."""
    from funrl.data import ManifestError
    from funrl.data_formats import load_clips

    for name in ("batch", "max_new_tokens", "max_audio_seconds"):
        if getattr(args, name) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.out and Path(args.out).is_dir():
        raise InputError(f"--out {args.out} is a folder; give a file path such as {Path(args.out) / 'report.json'}")
    try:
        check_normalizer(args.normalizer)
    except NormalizerError as exc:
        raise InputError(f"--normalizer: {exc}") from None
    try:
        clips = load_clips(args.manifest, args.format, args.audio_dir)
    except (ManifestError, ImportError) as exc:
        raise InputError(_one_line(exc)) from None
    _check_audio(clips, args.max_audio_seconds)

    from policy.models import get_adapter
    from policy.models.base import read_config
    from policy.models.hub import resolve_model_path

    try:  # a Hub id (org/name[@revision]) is its snapshot folder in the local Hugging Face cache
        folder = resolve_model_path(args.model, key="--model")
    except FileNotFoundError as exc:
        raise InputError(_one_line(exc)) from None
    try:
        get_adapter(read_config(folder)["model_type"], where=str(folder / "config.json"))
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(_one_line(exc)) from None
    return clips, folder


def _load_embedder(args: argparse.Namespace, folder: Path):
    """The audio-embedding worker with the model loaded; a model folder missing a part (weights, ``llm/``,
    tokenizer) or not matching its config is an InputError naming the path, before vLLM starts."""
    from policy.config import ModelConfig
    from rollout.embedding import AudioEmbeddingWorker

    try:
        return AudioEmbeddingWorker(
            ModelConfig(path=str(folder), dtype=args.dtype),
            max_audio_seconds=args.max_audio_seconds,
            batch_size=args.batch,
        )
    except (OSError, ValueError) as exc:  # FileNotFoundError of the model layer, transformers' OSError
        raise InputError(f"--model {args.model}: {_one_line(exc)}") from None


def _run(args: argparse.Namespace) -> int:
    clips, folder = _checked_inputs(args)
    embedder = _load_embedder(args, folder)
    from funrl.data import clip_location
    from rollout.config import RolloutConfig
    from rollout.engine_folder import export_engine_llm
    from rollout.vllm_worker import VLLMRolloutWorker

    def embed(batch: list[Clip]) -> PromptBatch:
        try:
            return embedder.embed(batch)
        except ValueError as exc:  # load_audio names the file
            bad = [c for c in batch if c.audio in str(exc)]
            if bad:
                raise InputError(f"{clip_location(bad[0])}: {_one_line(exc)}") from None
            raise

    with tempfile.TemporaryDirectory(prefix="funrl-eval-") as tmp:
        llm_dir = export_engine_llm(embedder.model_cfg, str(Path(tmp) / "llm"))
        max_len = args.max_model_len or min(2048, _max_position(llm_dir) or 2048)
        if args.max_new_tokens >= max_len:
            raise InputError(f"--max-new-tokens {args.max_new_tokens} must be < --max-model-len {max_len}")
        kv_bytes = max(64 << 20, _kv_bytes_per_token(llm_dir, args.dtype) * max_len * min(args.batch, 8))
        cfg = RolloutConfig(
            n=1,
            max_new_tokens=args.max_new_tokens,
            max_model_len=max_len,
            kv_cache_memory_bytes=kv_bytes,
            embed_batch_size=args.batch,
        )
        worker = VLLMRolloutWorker(llm_dir, cfg, dtype=args.dtype)

        def generate(prompts: PromptBatch) -> RolloutBatch:
            for clip, e in zip(prompts.clips, prompts.prompt_embeds):
                if e.shape[0] + args.max_new_tokens > max_len:
                    raise InputError(
                        f"{clip_location(clip)}: audio {clip.audio}: prompt of {e.shape[0]} "
                        f"positions + --max-new-tokens {args.max_new_tokens} exceeds "
                        f"--max-model-len {max_len}"
                    )
            return worker.generate(prompts, greedy=True)

        try:
            report, records = evaluate(
                embed, generate, clips, args.batch, progress=not args.no_progress, normalizer=args.normalizer
            )
        finally:
            worker.shutdown()
    _print_report(args, report, records)
    return 0


def _print_report(args: argparse.Namespace, report: EvalReport, records: Sequence[dict]) -> None:
    if args.out:
        write_report(report, records, args.out)
    print(format_table({Path(args.model).name or "model": report}))
    print(
        f"clips: {report.num_clips} ({report.num_noise_clips} noise-only), reference words {report.num_words}, "
        f"Chinese characters {report.num_chars}, keywords {report.num_keywords}, normalizer {report.normalizer}"
    )
    if args.out:
        print(f"report: {args.out}  per clip: {clips_path(args.out)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # in-process vLLM engine, local files only; set before vLLM / transformers are imported
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        return _run(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
