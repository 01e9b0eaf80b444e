"""Plan the demo data set: which sentence, voice, noise and level every clip gets.

All random choices are made here, in one process, from `default_rng(seed)`; rendering
(render.py) then follows the plan exactly. Sentences are drawn without repetition across the
whole set, so the splits are disjoint by sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funrl.demo import text as text_mod
from funrl.demo.noise import NOISE_KINDS
from funrl.demo.render import ClipSpec
from funrl.demo.tts import ENGLISH_VARIANTS, MANDARIN_VOICE

BUILD_VERSION = 1  # bump when the plan or the rendering changes (invalidates cached data)
MANDARIN_VOICES = (MANDARIN_VOICE,) + tuple(f"{MANDARIN_VOICE}+{v.split('+')[1]}" for v in ENGLISH_VARIANTS[::2])


_SHARES = (
    "mandarin_share",
    "keyword_share",
    "context_share",
    "noisy_share",
    "piper_share",
    "two_keyword_share",
    "sft_context_share",
    "test_keyword_share",
    "test_context_share",
)
# Fields added after BUILD_VERSION 1, with the value that reproduces version 1's plan: at that value they stay
# out of the cache key, so data built before they existed is still recognised as the same set.
LATER_FIELDS = {
    "two_keyword_share": 0.2,
    "sft_context_share": None,
    "test_keyword_share": None,
    "test_context_share": None,
}
PRESETS = {"full": "", "small": "small", "keyword_rich": "keyword_rich"}  # name -> DemoSizes classmethod
DEFAULT_DEMO_SIZE = "keyword_rich"  # what `python -m funrl.train` with no arguments builds and trains on


@dataclass(frozen=True)
class DemoSizes:
    """How many clips of each kind; shares are of each split's speech clips."""

    sft_train: int = 1500  # speech clips (no noise-only clips in SFT data)
    rl_train: int = 800
    rl_noise: int = 120  # noise-only clips added to rl_train
    dev: int = 100
    dev_noise: int = 20
    test: int = 250
    test_noise: int = 50
    mandarin_share: float = 0.1  # of speech clips
    keyword_share: float = 0.25  # of English speech clips
    context_share: float = 0.5  # of keyword clips: keywords also given as prompt context
    noisy_share: float = 0.35  # of speech clips: mixed with noise
    piper_share: float = 0.2  # of English speech clips: neural voice (else espeak-ng)
    snr_db: tuple[float, float] = (0.0, 15.0)
    two_keyword_share: float = 0.2  # of keyword clips: two keywords instead of one
    # Per-split overrides (None: the shares above). Few SFT clips with context leave "use the prompt's context"
    # for RL to learn; a test split rich in keywords measures recall on hundreds of them, not sixty.
    sft_context_share: float | None = None
    test_keyword_share: float | None = None
    test_context_share: float | None = None

    def __post_init__(self) -> None:
        for name in ("sft_train", "rl_train", "rl_noise", "dev", "dev_noise", "test", "test_noise"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"DemoSizes.{name} must be >= 0, got {getattr(self, name)}")
        for name in _SHARES:
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"DemoSizes.{name} must be in [0, 1], got {value}")
        lo, hi = self.snr_db
        if lo > hi:
            raise ValueError(f"DemoSizes.snr_db must be (low, high), got {self.snr_db}")

    @classmethod
    def small(cls) -> "DemoSizes":
        """About 60/40/20/20 clips: for CI and tests (a few seconds to build)."""
        return cls(sft_train=60, rl_train=34, rl_noise=6, dev=16, dev_noise=4, test=16, test_noise=4)

    @classmethod
    def keyword_rich(cls) -> "DemoSizes":
        """The full set with twice the SFT clips (3000: a pretrained encoder's adapter + LLM memorised 1500),
        keyword context on 15 % of SFT keyword clips, and a 400-clip test split in which 80 % of English clips
        carry keywords (40 % of them two) and 80 % of those get context: ~320 test keywords on clips with
        context, where the full set has ~30."""
        return cls(
            sft_train=3000,
            test=400,
            two_keyword_share=0.4,
            sft_context_share=0.15,
            test_keyword_share=0.8,
            test_context_share=0.8,
        )

    @classmethod
    def preset(cls, name: str) -> "DemoSizes":
        """The named size of the demo data (`PRESETS`)."""
        if name not in PRESETS:
            raise ValueError(f"unknown demo data size {name!r}; choose one of {', '.join(PRESETS)}")
        return getattr(cls, PRESETS[name])() if PRESETS[name] else cls()

    def shares(self, split: str) -> tuple[float, float]:
        """(keyword_share, context_share) of a split, its overrides applied."""
        kw, ctx = self.keyword_share, self.context_share
        if split == "sft_train" and self.sft_context_share is not None:
            ctx = self.sft_context_share
        if split == "test":
            kw = kw if self.test_keyword_share is None else self.test_keyword_share
            ctx = ctx if self.test_context_share is None else self.test_context_share
        return kw, ctx

    def split_counts(self) -> dict[str, tuple[int, int]]:
        """split -> (speech clips, noise-only clips)."""
        return {
            "sft_train": (self.sft_train, 0),
            "rl_train": (self.rl_train, self.rl_noise),
            "dev": (self.dev, self.dev_noise),
            "test": (self.test, self.test_noise),
        }


def _exact_subset(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """A boolean mask over n items with exactly round(share * n) set, at random places."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: int(round(share * n))]] = True
    return mask


def _sentences(rng: np.random.Generator, split: str, n: int, sizes: DemoSizes, seen: set[str]) -> list[dict]:
    """n unique (never in `seen`) sentences with their language, keywords and context."""
    keyword_share, context_share = sizes.shares(split)
    is_zh = _exact_subset(rng, n, sizes.mandarin_share)
    en_idx = np.flatnonzero(~is_zh)
    has_kw = np.zeros(n, dtype=bool)
    has_kw[en_idx[_exact_subset(rng, en_idx.size, keyword_share)]] = True
    kw_idx = np.flatnonzero(has_kw)
    has_ctx = np.zeros(n, dtype=bool)
    has_ctx[kw_idx[_exact_subset(rng, kw_idx.size, context_share)]] = True
    out = []
    kws: tuple[str, ...]
    for i in range(n):
        while True:
            if is_zh[i]:
                sent, kws = text_mod.mandarin_sentence(rng), ()
            else:
                n_kw = int(has_kw[i]) * (1 + int(rng.random() < sizes.two_keyword_share))
                sent, kws = text_mod.english_sentence(rng, n_kw)
            if sent not in seen:
                break
        seen.add(sent)
        context = None
        if has_ctx[i]:
            hot = list(kws)
            if rng.random() < 0.5:  # a distractor the audio does not contain
                hot.append(next(k for k in rng.permutation(text_mod.KEYWORDS) if k not in kws))
            context = ", ".join(str(h) for h in rng.permutation(hot))
        out.append({"text": sent, "lang": "zh" if is_zh[i] else "en", "keywords": kws, "context": context})
    return out


def voice_fields(rng: np.random.Generator, lang: str, piper: bool) -> dict:
    if piper:
        return {"engine": "piper", "length_scale": round(float(rng.uniform(0.8, 1.25)), 3)}
    voices = MANDARIN_VOICES if lang == "zh" else ENGLISH_VARIANTS
    lo, hi = (120, 190) if lang == "zh" else (130, 210)
    return {
        "engine": "espeak",
        "voice": voices[int(rng.integers(len(voices)))],
        "rate": int(rng.integers(lo, hi + 1)),
        "pitch": int(rng.integers(25, 76)),
    }


def _speech_specs(rng: np.random.Generator, split: str, sents: list[dict], sizes: DemoSizes) -> list[dict]:
    n = len(sents)
    noisy = _exact_subset(rng, n, sizes.noisy_share)
    en_idx = np.flatnonzero([s["lang"] == "en" for s in sents])
    piper = np.zeros(n, dtype=bool)
    piper[en_idx[_exact_subset(rng, en_idx.size, sizes.piper_share)]] = True
    specs = []
    for i, s in enumerate(sents):
        fields = dict(s, split=split, **voice_fields(rng, s["lang"], bool(piper[i])))
        if noisy[i]:
            fields["noise_kind"] = NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))]
            fields["snr_db"] = round(float(rng.uniform(*sizes.snr_db)), 2)
        fields["level_dbfs"] = round(float(rng.uniform(-32.0, -20.0)), 2)
        fields["pad"] = (round(float(rng.uniform(0.1, 0.5)), 3), round(float(rng.uniform(0.1, 0.5)), 3))
        specs.append(fields)
    return specs


def _noise_specs(rng: np.random.Generator, split: str, n: int) -> list[dict]:
    return [
        {
            "split": split,
            "text": "",
            "lang": None,
            "keywords": (),
            "context": None,
            "engine": "noise",
            "noise_kind": NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))],
            "seconds": round(float(rng.uniform(1.0, 5.0)), 3),
            "level_dbfs": round(float(rng.uniform(-45.0, -20.0)), 2),
        }
        for _ in range(n)
    ]


def plan_clips(seed: int, sizes: DemoSizes) -> list[ClipSpec]:
    """Every clip of the demo set, in manifest order (split by split, shuffled within a split)."""
    rng = np.random.default_rng(int(seed))
    seen: set[str] = set()
    specs: list[ClipSpec] = []
    for split, (n_speech, n_noise) in sizes.split_counts().items():
        fields = _speech_specs(rng, split, _sentences(rng, split, n_speech, sizes, seen), sizes)
        fields += _noise_specs(rng, split, n_noise)
        order = rng.permutation(len(fields))
        for j, k in enumerate(order):
            f = fields[k]
            f["keywords"] = tuple(str(w) for w in f["keywords"])
            specs.append(ClipSpec(name=f"{split}_{j:05d}", seed=int(rng.integers(2**31)), **f))
    return specs
