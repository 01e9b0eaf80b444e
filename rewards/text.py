"""The one text normaliser and tokeniser every reward uses (docs/design.md#text-normalisation).

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
"""
from __future__ import annotations

import unicodedata
from functools import lru_cache

import regex

__all__ = ["normalize", "tokenize", "tokens", "token_string"]

_PUNCT = regex.compile(r"\p{P}+")
_TOKEN = regex.compile(r"\p{Han}|[^\s\p{Han}]+")


def normalize(text: str) -> str:
    """NFKC, lower-case, punctuation -> space, whitespace collapsed and stripped."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCT.sub(" ", text).split())


@lru_cache(maxsize=1 << 16)
def tokens(text: str) -> tuple[str, ...]:
    """The tokens of ``text`` (normalised first) as a tuple; cached."""
    return tuple(_TOKEN.findall(normalize(text)))


def tokenize(text: str) -> list[str]:
    """The tokens of ``text`` (normalised first): CJK ideographs one each, other runs split on whitespace."""
    return list(tokens(text))


def token_string(toks: tuple[str, ...] | list[str]) -> str:
    """Tokens joined as ``" t1 t2 ... tn "``: one space before and after every token.

    Tokens never contain whitespace, so ``" a b " in token_string(x)`` is true exactly
    when ``a b`` is a contiguous run of tokens of ``x``.
    """
    return " " + " ".join(toks) + " " if toks else " "
