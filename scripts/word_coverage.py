"""How often a model writes a word right, by how often the word occurs in its training text.

    python scripts/word_coverage.py EVAL.clips.jsonl TRAIN.jsonl [TRAIN.jsonl ...]

EVAL.clips.jsonl is the per-clip file `python -m funrl.eval --out R.json` writes beside R.json; the TRAIN
manifests are those the model learnt from (their ``text`` fields). Each reference word of the evaluated speech
clips (the words `funrl.eval` scores: the basic normaliser's tokens) is aligned to the hypothesis (jiwer) and
counted as right when the alignment keeps it; the words are put in buckets by how many times they occur in the
training text. A model
that hears sounds writes unseen words about as well as seen ones; one that learnt words writes unseen words
almost never. BENCHMARKS.md ("Which words the SLAM-ASR model writes") shows both tables of a run.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import jiwer

from funrl.cli_help import doc_parser
from funrl.data import ManifestError, load_manifest
from rewards.text import tokenize

BUCKETS = ((0, 0), (1, 2), (3, 9), (10, 99), (100, None))  # occurrences in the training text, inclusive


def words(text: str) -> list[str]:
    """The words WER counts: the reward library's basic normaliser and tokens, as `funrl.eval` uses them."""
    return tokenize(text, "basic")


def text_counts(manifests: Iterable[Path]) -> Counter[str]:
    """How many times each word occurs in the ``text`` of the manifests' lines."""
    counts: Counter[str] = Counter()
    for path in manifests:
        for clip in load_manifest(path, check_audio=False):  # a bad line: ManifestError naming file:line
            counts.update(words(clip.text))
    return counts


def kept_words(ref: str, hyp: str) -> list[tuple[str, bool]]:
    """Each reference word and whether the alignment to ``hyp`` keeps it (an ``equal`` chunk)."""
    ref_words, hyp_words = words(ref), words(hyp)
    if not ref_words:
        return []
    if not hyp_words:
        return [(w, False) for w in ref_words]
    kept = [False] * len(ref_words)
    for chunk in jiwer.process_words(" ".join(ref_words), " ".join(hyp_words)).alignments[0]:
        if chunk.type == "equal":
            kept[chunk.ref_start_idx : chunk.ref_end_idx] = [True] * (chunk.ref_end_idx - chunk.ref_start_idx)
    return list(zip(ref_words, kept))


def bucket_of(n: int) -> str:
    for lo, hi in BUCKETS:
        if n >= lo and (hi is None or n <= hi):
            return f"{lo}+" if hi is None else (f"{lo}" if lo == hi else f"{lo}-{hi}")
    raise ValueError(n)


def coverage_table(rows: Iterable[dict], counts: Counter[str]) -> dict[str, tuple[int, int]]:
    """Bucket -> (reference words in it, of them written right), over the speech clips of ``rows``."""
    table = {bucket_of(lo): (0, 0) for lo, _ in BUCKETS}
    for row in rows:
        if row.get("noise"):
            continue
        for word, right in kept_words(row["ref"], row.get("hyp") or ""):
            bucket = bucket_of(counts[word])
            total, hits = table[bucket]
            table[bucket] = (total + 1, hits + right)
    return table


def main(argv: list[str] | None = None) -> int:
    ap = doc_parser(__doc__ or "")
    ap.add_argument("clips", type=Path, help="per-clip file of python -m funrl.eval (R.clips.jsonl)")
    ap.add_argument("train", type=Path, nargs="+", help="training manifests (JSONL, as funrl.sft reads them)")
    args = ap.parse_args(argv)
    for path in [args.clips, *args.train]:
        if not path.is_file():
            print(f"word_coverage: {path} does not exist", file=sys.stderr)
            return 2
    rows = [json.loads(line) for line in args.clips.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        counts = text_counts(args.train)
    except ManifestError as exc:
        print(f"word_coverage: {exc}", file=sys.stderr)
        return 2
    table = coverage_table(rows, counts)
    all_words = sum(t for t, _ in table.values())
    print("| times in the training text | share of the reference words | written right |")
    print("|---|---|---|")
    for bucket, (total, hits) in table.items():
        right = f"{100 * hits / total:.1f} %" if total else "–"
        print(f"| {bucket} | {100 * total / max(all_words, 1):.1f} % ({total}) | {right} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
