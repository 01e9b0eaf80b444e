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
from pathlib import Path

from funrl.eval_metrics import (
    EvalReport,
    clip_results,
    clips_path,
    format_table,
    summarise,
    write_report,
)
from policy.messages import Clip, PromptBatch, RolloutBatch
from rewards.text import NORMALIZERS, NormalizerError, check_normalizer

__all__ = [
    "EvalReport",
    "clip_results",
    "summarise",
    "evaluate",
    "format_table",
    "write_report",
    "clips_path",
    "main",
]


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
