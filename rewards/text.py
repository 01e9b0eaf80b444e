"""The text normalisers and the tokeniser the rewards use (docs/design.md#text-normalisation).

``normalize``: Unicode NFKC, lower-case, every punctuation character (Unicode
category ``P*``) becomes a space, runs of whitespace collapse to one space, and
the ends are stripped.

``tokenize``: the normalised text split into tokens: every CJK ideograph (Unicode
script Han) is a token of its own; the other runs are split on whitespace. So

    >>> tokenize("Hello, World!")
    ['hello', 'world']
    >>> tokenize("我爱 Beijing")
    ['我', '爱', 'beijing']

Kana and Hangul are not ideographs: a kana run without spaces stays one token.
Symbols (category ``S*``, e.g. ``$`` or ``+``) and digits are kept.

``tokens`` is the cached form (a tuple) the rewards share, so that one batch
normalises each distinct string once however many rewards read it.

Normalisers, by name (``NORMALIZERS``; ``rewards.normalizer`` in training, ``--normalizer`` in the CLIs):

* ``basic`` (the default): ``normalize`` above.
* ``whisper_en``: transformers' Whisper English normaliser (``EnglishTextNormalizer``), the one published
  English ASR tables use: numbers written as digits ("twenty five" -> "25", "$25" kept), British spellings
  mapped to American ones ("colour" -> "color"), contractions and titles expanded ("won't" -> "will not",
  "mr" -> "mister"), fillers dropped ("uh", "hmm"), punctuation removed. Its spelling map is the JSON file
  the ``whisper-normalizer`` package ships (``pip install 'funrl[whisper-en]'``); transformers does not ship
  one (a Whisper checkpoint carries it as normalizer.json). Its tokens are split like ``basic``'s (Han
  characters one each), but on the Whisper output as it is: "3.5" stays one token. Meant for English sets.

A batch is scored under one normaliser: ``score_batch(..., normalizer=NAME)`` selects it (``using_normalizer``)
for the rewards that compare words with the reference (``wer``, ``keyword``), which read it with
``active_normalizer()``. ``hallucination`` and ``language`` always use ``basic``: any output on a noise clip,
"uh" included, is a hallucination, and language detection needs the raw words.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache

import regex

__all__ = [
    "NORMALIZERS",
    "NormalizerError",
    "active_normalizer",
    "check_normalizer",
    "normalize",
    "tokenize",
    "tokens",
    "token_string",
    "using_normalizer",
]

NORMALIZERS = ("basic", "whisper_en")
_ACTIVE: ContextVar[str] = ContextVar("rewards_normalizer", default="basic")


class NormalizerError(ValueError):
    """An unknown normaliser name, or one whose package is not installed; the message says what to do."""


_PUNCT = regex.compile(r"\p{P}+")
_TOKEN = regex.compile(r"\p{Han}|[^\s\p{Han}]+")


def _basic(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCT.sub(" ", text).split())


@lru_cache(maxsize=1)
def _whisper_en() -> Callable[[str], str]:
    """transformers' EnglishTextNormalizer with the spelling map the whisper-normalizer package ships."""
    import importlib.resources

    try:
        source = importlib.resources.files("whisper_normalizer") / "normalizers" / "english.json"
        mapping = json.loads(source.read_text(encoding="utf-8"))
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise NormalizerError(
            f"normalizer 'whisper_en' needs the English spelling map of the whisper-normalizer "
            f"package ({exc}): pip install 'funrl[whisper-en]'"
        ) from None
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(mapping)


def check_normalizer(name: str) -> None:
    """Raise `NormalizerError` unless ``name`` is a normaliser that can run here (its package is installed)."""
    if name not in NORMALIZERS:
        raise NormalizerError(f"unknown normalizer {name!r}: choose from {', '.join(NORMALIZERS)}")
    if name == "whisper_en":
        _whisper_en()


def normalize(text: str, normalizer: str = "basic") -> str:
    """``text`` under the normaliser ``normalizer`` (``basic``: NFKC, lower-case, punctuation -> space,
    whitespace collapsed and stripped; ``whisper_en``: see the module doc)."""
    if normalizer == "basic":
        return _basic(text)
    check_normalizer(normalizer)
    return _whisper_en()(text)


@lru_cache(maxsize=1 << 16)
def tokens(text: str, normalizer: str = "basic") -> tuple[str, ...]:
    """The tokens of ``text`` (normalised first) as a tuple; cached."""
    return tuple(_TOKEN.findall(normalize(text, normalizer)))


def tokenize(text: str, normalizer: str = "basic") -> list[str]:
    """The tokens of ``text`` (normalised first): CJK ideographs one each, other runs split on whitespace."""
    return list(tokens(text, normalizer))


def active_normalizer() -> str:
    """The normaliser selected for the batch being scored (`using_normalizer`); ``basic`` outside one."""
    return _ACTIVE.get()


@contextmanager
def using_normalizer(name: str) -> Iterator[None]:
    """Select normaliser ``name`` for the rewards scored inside the block (checked first: `check_normalizer`)."""
    check_normalizer(name)
    token = _ACTIVE.set(name)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def token_string(toks: tuple[str, ...] | list[str]) -> str:
    """Tokens joined as ``" t1 t2 ... tn "``: one space before and after every token.

    Tokens never contain whitespace, so ``" a b " in token_string(x)`` is true exactly
    when ``a b`` is a contiguous run of tokens of ``x``.
    """
    return " " + " ".join(toks) + " " if toks else " "
