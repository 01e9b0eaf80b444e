"""R4 ``language``: is the hypothesis in the clip's expected language? (docs/design.md#language-r4)

Detection, in two stages, on the normalised tokens of ``rewards.text``:

1. **Script vote.** Every token votes for the script of its first letter (a CJK
   ideograph is a token of its own, so Chinese votes per character). Han and kana
   form one CJK block: it is ``ja`` when any kana occurs, else ``zh``; Hangul is
   ``ko``; Latin is ``latin``; any other script by its Unicode name (``cyrillic``,
   ``arabic``, ``devanagari``, ...). Tokens without letters (digits, symbols) do
   not vote. The script with most votes wins; on a tie the expected one wins.
2. **English or not**, only for a Latin-script winner, over its Latin tokens:
   function words (English vs German/French/Spanish/Italian/Portuguese/Dutch;
   words shared by English and another list count for neither, nor do ordinary
   English words that are another language's function word, such as "hat",
   "war", "die", "am", nor single letters) plus tokens with
   letters outside ASCII (evidence against English). English wins with at least
   one hit and twice the other side's; not-English needs at least two hits (a
   truncated word such as "te" in "broccoli lunch te" is one) and twice English's. Otherwise, and only for texts of
   at least ``LINGUA_MIN_TOKENS`` Latin tokens, ``lingua`` decides (restricted to
   those seven languages, high accuracy, minimum relative distance 0.25; built
   once, on first use). Still undecided -> not a mismatch.

Why this design: lingua alone costs 100-160 us a text (too slow for the 5,000
pairs/s target with one core) and is wrong on short texts ("we use python to
write code" -> German, "paris is nice" -> French), which would punish correct
English transcripts. Function words decide almost every real sentence in ~1 us
and never fire on a single name; lingua covers the long texts without them. Among
Latin languages only English vs non-English is judged: closely related
languages are too easily confused on short ASR outputs to punish.

Expected languages (``meta["lang"]``, BCP-47-ish: ``zh-CN``, ``cmn``, ``en_US``
...) are mapped by their primary subtag with ``EXPECTED_CLASS``; a code that is
not in the table is not checked (reward 0).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import cache, lru_cache

from rewards.registry import register
from rewards.text import tokens

__all__ = ["language", "detect_language", "language_mismatch", "expected_class", "EXPECTED_CLASS", "LINGUA_MIN_TOKENS"]

LINGUA_MIN_TOKENS = 5
_LINGUA_MIN_DISTANCE = 0.25

_LATIN_LANGS = (
    "de fr es it pt nl pl cs sk sl hr bs sv da no nb nn fi et lv lt hu ro tr az id ms vi "
    "ca eu gl oc sq af sw tl fil ga cy is mt lb fo eo la uz ha yo zu xh so "
    "deu ger fra fre spa ita por nld dut pol ces cze swe dan nor fin hun ron rum tur ind vie cat"
)
_SCRIPT_LANGS = {
    "cyrillic": "ru uk be bg mk sr kk ky tg mn rus ukr bel bul",
    "arabic": "ar fa ur ps ug ara fas per urd",
    "devanagari": "hi mr ne sa hin mar nep",
    "greek": "el ell gre",
    "hebrew": "he iw yi heb",
    "thai": "th tha",
    "bengali": "bn as ben",
    "tamil": "ta tam",
    "telugu": "te tel",
    "gujarati": "gu guj",
    "kannada": "kn kan",
    "malayalam": "ml mal",
    "gurmukhi": "pa pan",
    "georgian": "ka kat geo",
    "armenian": "hy hye arm",
    "khmer": "km khm",
    "lao": "lo lao",
    "myanmar": "my mya bur",
    "sinhala": "si sin",
    "ethiopic": "am amh",
}
EXPECTED_CLASS: dict[str, str] = {
    **{c: "zh" for c in "zh cmn yue wuu nan hak zho chi".split()},
    **{c: "ja" for c in "ja jpn".split()},
    **{c: "ko" for c in "ko kor".split()},
    **{c: "en" for c in "en eng".split()},
    **{c: "latin" for c in _LATIN_LANGS.split()},
    **{c: script for script, codes in _SCRIPT_LANGS.items() for c in codes.split()},
}

_EN = set(
    """the and of to is are was were you your that this these those it its with for have has had
be been being not they them their we our he she his him her what which who whom will would can could
should shall there here from at by or but if my me us an on about just than then when where why how
all any some into out up down over after before because very also only do does did don didn doesn
isn aren wasn weren won t ll ve re
i a in so no as is was do me on an son d m s""".split()
)
_OTHER = set(
    """der die das und ist nicht ein eine einen zu den dem mit sich auf für von es ich sie er wir ihr
auch wie noch nach aber wenn oder bei sind war hat haben werden wird kann nur schon dass mir mich dir
uns vom zum zur im ins am aus über was wo le la les de des du un une et est sont pas ne je tu il elle
nous vous ils elles que qui dans pour sur avec ce cette ces mais ou au aux son sa ses leur très été
être fait c l j n qu el los las del y en es son no por para con se lo su sus al como más pero muy yo
él ella está están hay fue ser este esta eso il lo gli di della e che è per non si sono ma anche nel
nella alla questo questa io lui lei noi voi loro ho ha hanno sei mi ti ci o os as do da dos das em um
uma é não na no nos ao mais mas eu ele nós você são foi isso het een van dat op te zijn met voor er om
ook als bij nog wel naar heb hebben ik je jij hij zij wij ze dit geen
i a in so no as is was do me on an son d m s""".split()
)
# ordinary English words that are another language's function word, and single letters (spelled-out
# initials, "N B S"): no evidence either way ("small violin hat" is English; "hat" was German evidence)
_AMBIGUOUS = set("am hat war die den hay pour con per met van um ha ma c e j l n o y".split())
EN_WORDS = frozenset(_EN - _OTHER - _AMBIGUOUS)
OTHER_WORDS = frozenset(_OTHER - _EN - _AMBIGUOUS)


@lru_cache(maxsize=4096)
def _char_script(ch: str) -> str | None:
    """Script class of one letter: 'han', 'kana', 'ko', 'latin' or the Unicode script word; None if no letter."""
    if not ch.isalpha():
        return None
    word = unicodedata.name(ch, "").split(" ", 1)[0]
    if word in ("CJK", "IDEOGRAPHIC"):
        return "han"
    if word in ("HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA"):
        return "kana"
    if word == "HANGUL":
        return "ko"
    return word.lower() or None


def _token_script(tok: str) -> str | None:
    for ch in tok:
        script = _char_script(ch)
        if script is not None:
            return script
    return None


def _script_votes(toks: tuple[str, ...]) -> tuple[Counter, list[str]]:
    """(votes per script class, the Latin tokens); Han + kana merge into 'ja' or 'zh'."""
    votes: Counter = Counter()
    latin = []
    for tok in toks:
        script = _token_script(tok)
        if script is not None:
            votes[script] += 1
            if script == "latin":
                latin.append(tok)
    han, kana = votes.pop("han", 0), votes.pop("kana", 0)
    if han + kana:
        votes["ja" if kana else "zh"] = han + kana
    return votes, latin


@cache
def _lingua():
    from lingua import Language, LanguageDetectorBuilder

    langs = [
        Language.ENGLISH,
        Language.GERMAN,
        Language.FRENCH,
        Language.SPANISH,
        Language.ITALIAN,
        Language.PORTUGUESE,
        Language.DUTCH,
    ]
    return (
        LanguageDetectorBuilder.from_languages(*langs).with_minimum_relative_distance(_LINGUA_MIN_DISTANCE).build(),
        Language.ENGLISH,
    )


def is_english(latin_tokens: list[str] | tuple[str, ...]) -> bool | None:
    """English (True), another Latin-script language (False) or undecided (None); see module doc."""
    en = other = 0
    for tok in latin_tokens:
        if tok in EN_WORDS:
            en += 1
        elif tok in OTHER_WORDS or not tok.isascii():
            other += 1
    if en and en >= 2 * other:
        return True
    if other >= 2 and other >= 2 * en:  # one stray token ("ho", "te") is not enough against English
        return False
    if len(latin_tokens) < LINGUA_MIN_TOKENS:
        return None
    detector, english = _lingua()
    found = detector.detect_language_of(" ".join(latin_tokens))
    return None if found is None else found == english


@lru_cache(maxsize=1 << 14)
def _detect(toks: tuple[str, ...]) -> tuple[tuple[str, ...], bool | None]:
    """(script classes with the most votes, English-or-not of the Latin tokens if Latin is among them)."""
    votes, latin = _script_votes(toks)
    if not votes:
        return (), None
    top = max(votes.values())
    winners = tuple(sorted(k for k, v in votes.items() if v == top))
    return winners, (is_english(latin) if "latin" in winners else None)


def detect_language(text: str) -> str | None:
    """Detected language class of ``text``: 'zh', 'ja', 'ko', 'en', 'latin' (non-English Latin),
    'latin?' (Latin, English or not undecided), another script's name, or None (no letters).
    On a script tie the alphabetically first wins (``language_mismatch`` prefers the expected one)."""
    winners, english = _detect(tokens(text))
    if not winners:
        return None
    if winners[0] == "latin":
        return "latin?" if english is None else ("en" if english else "latin")
    return winners[0]


def expected_class(lang: str | None) -> str | None:
    """The class ``meta["lang"]`` expects ('zh', 'ja', 'ko', 'en', 'latin', a script), None if unknown."""
    if not lang or not isinstance(lang, str):
        return None
    parts = lang.strip().lower().replace("_", "-").split("-")
    cls = EXPECTED_CLASS.get(parts[0])
    if cls not in ("en", None) and "latn" in parts[1:]:
        return "latin"
    return cls


def language_mismatch(hyp: str, lang: str | None) -> bool:
    """True when ``lang`` is known, ``hyp`` has letters and its detected language differs."""
    want = expected_class(lang)
    if want is None:
        return False
    winners, english = _detect(tokens(hyp))
    if not winners:
        return False
    if want in ("en", "latin"):
        if "latin" not in winners:
            return True
        return english is not None and english != (want == "en")
    return want not in winners


@register("language")
def language(hyps: list[str], refs: list[str], metas: list[dict]) -> list[float | None]:
    """R4, in {-1, 0}: -1 when the hypothesis is not in the expected language ``meta["lang"]``.

    -1 when ``meta["lang"]`` is given, the hypothesis is non-empty and its detected
    language differs from it; else 0.

    Detection separates zh / ja / ko / other scripts from Latin by a per-token script
    vote, and English from other Latin-script languages by function words (lingua for
    long texts without them); undecided or unknown expected codes count as no mismatch.
    See the module documentation for the exact rules.
    """
    return [-1.0 if language_mismatch(h, (m or {}).get("lang")) else 0.0 for h, m in zip(hyps, metas)]
