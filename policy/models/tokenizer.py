"""A small character-level tokenizer built locally with ``tokenizers`` (no hub) for tiny test/demo models.

It has exactly the structure of Qwen2's byte-level BPE tokenizer (NFC normaliser, Qwen2's split regex,
ByteLevel pre-tokenizer and decoder), so it encodes and decodes the same whichever class transformers (and
vLLM) load it as: transformers 5 rebuilds a tokenizer saved beside a ``qwen2`` config as ``Qwen2Tokenizer``
with that pipeline, and reads it from ``tokenizer.json`` as it is beside ``qwen3``/``llama`` configs.

Vocabulary: the 256 byte symbols (so any text encodes; every ASCII character is one token) plus one merged
token per character of `CJK_CHARS` and ``extra_chars`` (each multi-byte character becomes a single token),
then the special tokens. A Qwen-style chat template makes ``apply_chat_template`` work.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

# Qwen2's pre-tokenisation regex (transformers' Qwen2Tokenizer), so a reload as Qwen2Tokenizer is identical.
SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio|>", "<|startofspeech|>", "<|endofspeech|>")
PAD_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Common Chinese characters (incl. those the tests and demo prompts use) and CJK punctuation.
CJK_CHARS = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天"
    "而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些"
    "与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相"
    "次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立"
    "马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共"
    "风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快"
    "条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻程告江语英基派满式李"
    "息写呢识极令黄德收脸钱党倒未持音乐频词热语境识别转写今天气晴朗欢迎你好谢再见"
    "，。！？、；：“”‘’（）《》…—"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (what ByteLevel uses)."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _vocab_and_merges(chars: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte symbols, then for each multi-byte character the merges that build it left to right."""
    byte_sym = _bytes_to_unicode()
    vocab = {byte_sym[b]: b for b in range(256)}
    merges: list[tuple[str, str]] = []
    for ch in dict.fromkeys(chars):  # keeps order, drops duplicates
        syms = [byte_sym[b] for b in ch.encode("utf-8")]
        left = syms[0]
        for right in syms[1:]:
            merged = left + right
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((left, right))
            left = merged
    return vocab, merges


def build_char_tokenizer(extra_chars: str = "") -> PreTrainedTokenizerFast:
    """The tokenizer described in the module doc; ``extra_chars`` get single tokens too.

    eos = ``<|im_end|>``, pad = ``<|endoftext|>``; special tokens follow the byte/character vocabulary.
    """
    vocab, merges = _vocab_and_merges(CJK_CHARS + extra_chars)
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in (EOS_TOKEN, PAD_TOKEN)],
    )
