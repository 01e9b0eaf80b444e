"""Benchmark ``rewards.score_batch`` (all built-in rewards) on one CPU core.

    .venv/bin/python scripts/bench_rewards.py [--pairs 10000] [--repeats 3] [--seed 0] [--profile]

Generates deterministic hyp/ref pairs of ~20 words: English, Chinese and mixed
Chinese/English speech with ASR-like substitutions, deletions and insertions,
keywords on some clips, noise-only clips (empty reference), repetition loops,
over-long outputs and outputs in the wrong language. Prints pairs/s of the whole
``score_batch`` call (caches cleared before each repeat) and each reward's share of
the time (text normalisation/tokenisation measured on its own).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[_var] = "1"

import rewards  # noqa: E402
from rewards import language as lang_mod  # noqa: E402
from rewards import text as text_mod  # noqa: E402

EN_WORDS = """the a of to and in is it you that he was for on are with as i his they be at one have this
from or had by not word but what some we can out other were all there when up use your how said an
each she which do their time if will way about many then them write would like so these her long
make thing see him two has look more day could go come did number sound no most people my over know
water than call first who may down side been now find any new work part take get place made live
where after back little only round man year came show every good me give our under name very through
just form sentence great think say help low line differ turn cause much mean before move right boy
old too same tell does set three want air well also play small end put home read hand port large
spell add even land here must big high such follow act why ask men change went light kind off need
house picture try us again animal point mother world near build self earth father model python
station weather meeting budget report network server beijing shanghai microsoft openai""".split()
ZH_CHARS = list(
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子"
    "说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点"
    "从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又"
    "么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入"
    "常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西"
    "被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认"
)
PREFIX = ["", "", "Well, ", "So: ", "OK! "]


def _en_sentence(rng: random.Random, n: int) -> str:
    words = [rng.choice(EN_WORDS) for _ in range(n)]
    words[0] = words[0].capitalize()
    return rng.choice(PREFIX) + " ".join(words) + rng.choice([".", "?", "!", ""])


def _zh_sentence(rng: random.Random, n: int, english: int = 0) -> str:
    chars = [rng.choice(ZH_CHARS) for _ in range(n)]
    for _ in range(english):
        chars.insert(rng.randrange(len(chars)), f" {rng.choice(EN_WORDS[-12:])} ")
    return "".join(chars) + rng.choice(["。", "？", "", "，"])


def _corrupt(rng: random.Random, ref: str, zh: bool, vocab: list[str], rate: float) -> str:
    units = list(ref.replace(" ", "")) if zh else ref.split()
    out = []
    for u in units:
        r = rng.random()
        if r < rate:
            out.append(rng.choice(vocab))  # substitution
        elif r < 1.5 * rate:
            continue  # deletion
        else:
            out.append(u)
        if rng.random() < rate / 2:
            out.append(rng.choice(vocab))  # insertion
    return ("" if zh else " ").join(out)


def _loop(rng: random.Random, hyp: str, zh: bool) -> str:
    units = list(hyp) if zh else hyp.split()
    if len(units) < 6:
        return hyp
    k, reps, at = rng.randint(1, 4), rng.randint(3, 8), rng.randrange(len(units) - 4)
    units[at:at] = units[at : at + k] * (reps - 1)
    return ("" if zh else " ").join(units)


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str], list[dict]]:
    """``n`` deterministic (hyp, ref, meta) triples; see the module doc for the mix."""
    rng = random.Random(seed)
    hyps, refs, metas = [], [], []
    for _ in range(n):
        kind = rng.random()
        zh = rng.random() < 0.45
        lang = "zh" if zh else "en"
        ref = (
            _zh_sentence(rng, rng.randint(14, 28), english=rng.randint(0, 2) if rng.random() < 0.3 else 0)
            if zh
            else _en_sentence(rng, rng.randint(14, 26))
        )
        hyp = _corrupt(rng, ref, zh, ZH_CHARS if zh else EN_WORDS, rng.choice([0.0, 0.05, 0.1, 0.2]))
        if kind < 0.06:  # noise-only clip
            ref, hyp = "", rng.choice(["", "", "thank you", "谢谢观看", _en_sentence(rng, 5)])
        elif kind < 0.16:  # repetition loop
            hyp = _loop(rng, hyp, zh)
        elif kind < 0.19:  # over-long output
            hyp = hyp + " " + " ".join([hyp] * 3)
        elif kind < 0.24:  # wrong language / translation
            hyp = _en_sentence(rng, 18) if zh else _zh_sentence(rng, 20)
        meta: dict = {"lang": lang}
        if rng.random() < 0.35 and ref:
            toks = text_mod.tokenize(ref)
            i = rng.randrange(len(toks))
            phrase = ("" if zh else " ").join(toks[i : i + rng.randint(1, 3)])
            meta["keywords"] = [phrase] + ([rng.choice(EN_WORDS)] if rng.random() < 0.5 else [])
        hyps.append(hyp)
        refs.append(ref)
        metas.append(meta)
    return hyps, refs, metas


def clear_caches() -> None:
    text_mod.tokens.cache_clear()
    lang_mod._detect.cache_clear()


def bench(hyps: list[str], refs: list[str], metas: list[dict], repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds of score_batch and of its parts (tokenise, each reward)."""
    rewards.score_batch(hyps[:50], refs[:50], metas[:50])  # warm-up (lingua models, char caches)
    times: dict[str, list[float]] = {"score_batch": [], "tokenise": [], **{name: [] for name in rewards.REGISTRY}}
    for _ in range(repeats):
        clear_caches()
        t0 = time.perf_counter()
        rewards.score_batch(hyps, refs, metas)
        times["score_batch"].append(time.perf_counter() - t0)
        clear_caches()
        t0 = time.perf_counter()
        for s in hyps + refs:
            text_mod.tokens(s)
        times["tokenise"].append(time.perf_counter() - t0)
        for name, fn in rewards.REGISTRY.items():  # token cache warm, own caches cold
            lang_mod._detect.cache_clear()
            t0 = time.perf_counter()
            fn(hyps, refs, metas)
            times[name].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()} | {"score_batch_median": statistics.median(times["score_batch"])}


def worst_case_language(n: int, seed: int) -> float:
    """Seconds per pair of the ``language`` reward when every hypothesis needs lingua."""
    rng = random.Random(seed + 1)
    content = [w for w in EN_WORDS if w not in lang_mod.EN_WORDS and w not in lang_mod.OTHER_WORDS]
    hyps = [" ".join(rng.choice(content) for _ in range(rng.randint(14, 26))) for _ in range(n)]
    metas = [{"lang": "en"} for _ in hyps]
    fn = rewards.REGISTRY["language"]
    fn(hyps[:20], hyps[:20], metas[:20])
    clear_caches()
    t0 = time.perf_counter()
    fn(hyps, hyps, metas)
    return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of one score_batch call")
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    hyps, refs, metas = make_pairs(args.pairs, args.seed)
    words = statistics.mean(len(text_mod.tokenize(r)) for r in refs if r)
    r = bench(hyps, refs, metas, args.repeats)
    n = args.pairs
    print(f"pairs: {n}  (mean {words:.1f} reference tokens; Python {sys.version.split()[0]}, 1 core)")
    print(
        f"score_batch, all {len(rewards.REGISTRY)} rewards: {n / r['score_batch']:,.0f} pairs/s best "
        f"({r['score_batch']:.3f} s), {n / r['score_batch_median']:,.0f} pairs/s median of {args.repeats}"
    )
    parts = ["tokenise", *rewards.REGISTRY]
    total = sum(r[p] for p in parts)
    print("time shares (each part alone, token cache warm for the rewards):")
    for p in parts:
        print(f"  {p:<14} {r[p] * 1e3:8.1f} ms  {100 * r[p] / total:5.1f} %")
    w = worst_case_language(min(n, 2000), args.seed)
    print(
        f"worst case, every hypothesis Latin without function words (lingua decides): "
        f"language reward {w * 1e6:.0f} us/pair; score_batch would be ~"
        f"{n / (r['score_batch'] - r['language'] + n * w):,.0f} pairs/s"
    )
    if args.profile:
        import cProfile
        import pstats

        clear_caches()
        prof = cProfile.Profile()
        prof.runcall(rewards.score_batch, hyps, refs, metas)
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
