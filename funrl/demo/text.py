"""Text pools of the built-in demo task: sentences of common English words, rarer keywords,
and Mandarin sentences from a small pool of common characters.

The English vocabulary holds one word of each homophone group (no "two"/"too"/"to" trio, no
"write"/"right"), so every sentence can in principle be recovered from its sound; the Mandarin
pool likewise avoids characters sharing a syllable and tone. Keywords are rarer words, never in
the common vocabulary.
"""

from __future__ import annotations

import hashlib

import numpy as np

COMMON_WORDS: tuple[str, ...] = tuple(
    sorted(
        set(
            """
the a and but or if with from into over under after before about again always never often very
just only also still soon then now here there this that these those what when where which who why
how all some many much more most every each other another such same than so not no yes may might
must can could should will did does done has have had was were is are be been he she it we they
you me him her us them my your his its our mine out up down off on in at by as of for to
time year day week month morning evening night water fire earth air light house home room door
window table chair bed floor wall kitchen garden street city town country world river lake ocean
mountain hill forest tree flower grass stone sand rain snow wind cloud sky sun moon star bird fish
dog cat horse cow sheep mouse money bank shop market school teacher student child family friend
mother father brother sister baby people man woman doctor police car bus train boat plane bike
road bridge station ticket letter book paper pen phone computer music song game ball team film
picture story news idea question answer problem reason word name number color sound voice face
hand head ear mouth foot arm leg heart body hair food bread milk tea coffee apple orange rice egg
soup cake cheese salt sugar box bag cup bottle glass key map clock watch shirt shoe coat hat job
work office meeting party holiday weekend summer winter spring autumn birthday church hospital
hotel museum library park beach island village farm field corner side end top bottom middle front
back left north south east west place space part line point group level kind way thing life
power energy heat price dinner lunch breakfast go come get give take make look see listen speak
talk say tell ask call read run walk sit stand open close start stop turn move live play help
learn teach study think feel want need like love try use find keep leave bring carry drive ride
fly swim jump sing dance draw cook eat drink sleep wake wash clean build break fix pay send show
wait stay follow remember forget win lose change begin finish hold catch throw push pull cut fall
grow meet sell plan visit travel count laugh smile cry climb good bad big small long short high
low hot cold warm cool new old young early late fast slow easy hard happy sad nice great little
large full empty heavy dark bright dirty quiet loud strong soft sweet rich poor free busy ready
safe sure true wrong real best better first last next blue green yellow white black brown gray
round deep wide simple special public famous beautiful funny lucky tired hungry angry clever
careful gentle proud silent wild wooden three five six seven nine ten twenty hundred today
tomorrow yesterday tonight
""".split()
        )
    )
)

KEYWORDS: tuple[str, ...] = tuple(
    sorted(
        set(
            """
pelican saffron quartz walrus origami tambourine zeppelin avalanche marzipan kangaroo labyrinth
meteorite porcupine xylophone chameleon gondola harpsichord igloo jaguar kaleidoscope lagoon
nebula obsidian papaya rhubarb sapphire tornado volcano wombat zucchini cinnamon flamingo giraffe
hazelnut iguana jasmine koala lantern mosaic narwhal octopus pistachio raccoon sardine trombone
vanilla waffle yogurt accordion broccoli cactus dinosaur emerald falcon glacier hamster lobster
mammoth orchid penguin scorpion telescope tulip violin walnut
""".split()
        )
    )
)

MANDARIN_CHARS: tuple[str, ...] = tuple(
    dict.fromkeys(
        "我你他们是不在有人大小上下天中国年好学生家水火山月日手口东西南北开马车鱼花草书读写听说吃喝"
        "走来去到买卖红白黑多少高新老早晚今明时分点电话风雪饭菜茶米面猫狗鸟树林田爸哥姐弟妹雨"
    )
)


def english_sentence(
    rng: np.random.Generator, n_keywords: int = 0, min_words: int = 3, max_words: int = 6
) -> tuple[str, tuple[str, ...]]:
    """A sentence of `min_words`..`max_words` distinct words, `n_keywords` of them keywords
    (placed at random positions); returns (text, keywords in the order they occur)."""
    n = int(rng.integers(max(min_words, n_keywords), max_words + 1))
    words = [COMMON_WORDS[i] for i in rng.choice(len(COMMON_WORDS), n - n_keywords, replace=False)]
    kws = [KEYWORDS[i] for i in rng.choice(len(KEYWORDS), n_keywords, replace=False)]
    for kw in kws:
        words.insert(int(rng.integers(0, len(words) + 1)), kw)
    return " ".join(words), tuple(w for w in words if w in kws)


def mandarin_sentence(rng: np.random.Generator, min_chars: int = 4, max_chars: int = 8) -> str:
    """A string of `min_chars`..`max_chars` characters from `MANDARIN_CHARS` (no spaces)."""
    n = int(rng.integers(min_chars, max_chars + 1))
    return "".join(MANDARIN_CHARS[i] for i in rng.choice(len(MANDARIN_CHARS), n, replace=False))


def random_words(rng: np.random.Generator, n: int) -> str:
    """`n` common words (with repetition), e.g. for babble talkers."""
    return " ".join(COMMON_WORDS[i] for i in rng.integers(0, len(COMMON_WORDS), n))


def fingerprint() -> str:
    """A hash of the text pools (part of the demo data's cache key)."""
    blob = "\n".join(["|".join(COMMON_WORDS), "|".join(KEYWORDS), "".join(MANDARIN_CHARS)])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
