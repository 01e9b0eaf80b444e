"""The built-in rewards R1-R3 (docs/design.md#rewards): ``wer``, ``keyword``, ``hallucination``.

(R4, ``language``, lives in ``rewards.language``.) Every reward works on the
tokens of ``rewards.text`` and scores the whole batch in one call.
"""

from __future__ import annotations

import re

import jiwer

from rewards.registry import register
from rewards.text import active_normalizer, token_string, tokens

__all__ = ["wer", "keyword", "hallucination", "token_errors", "repetition_loops", "hallucinated_tokens"]

_SPLIT = jiwer.ReduceToListOfListOfWords()
# A unit of 1-4 whole tokens (each followed by one space) repeated at least 3 times in a
# row; lazy, so the shortest unit that loops wins ("a a a a" is unit "a" x 4).
_LOOP = re.compile(r"(?:^|(?<= ))((?:\S+ ){1,4}?)\1{2,}")


def token_errors(hyps: list[str], refs: list[str], normalizer: str | None = None) -> list[tuple[int, int]]:
    """(S + D + I, N_ref) over the normalised tokens, per pair, by jiwer in one batched call.

    ``normalizer``: a name of ``rewards.text.NORMALIZERS``; None = the batch's (``active_normalizer()``).
    A pair with an empty reference gives (N_hyp, 0): every hypothesis token is an insertion.
    """
    norm = normalizer or active_normalizer()
    ref_t = [tokens(r, norm) for r in refs]
    hyp_t = [tokens(h, norm) for h in hyps]
    out = [(len(h), 0) for h in hyp_t]
    idx = [i for i, r in enumerate(ref_t) if r]
    if not idx:
        return out
    res = jiwer.process_words(
        [" ".join(ref_t[i]) for i in idx],
        [" ".join(hyp_t[i]) for i in idx],
        reference_transform=_SPLIT,
        hypothesis_transform=_SPLIT,
    )
    for i, chunks in zip(idx, res.alignments):
        errors = 0
        for c in chunks:
            if c.type == "insert":
                errors += c.hyp_end_idx - c.hyp_start_idx
            elif c.type != "equal":  # substitute / delete
                errors += c.ref_end_idx - c.ref_start_idx
        out[i] = (errors, len(ref_t[i]))
    return out


@register("wer")
def wer(hyps: list[str], refs: list[str], metas: list[dict]) -> list[float | None]:
    """R1, in [0, 1]: ``1 - min(1, WER)`` with WER = (S + D + I) / N_ref over normalised tokens (jiwer), under
    the batch's normaliser (``score_batch(normalizer=...)``: basic or whisper_en).

    Empty reference (noise-only clip): 1.0 when the hypothesis has no token, else 0.0.
    """
    out: list[float | None] = []
    for errors, n_ref in token_errors(hyps, refs):
        if n_ref == 0:
            out.append(1.0 if errors == 0 else 0.0)
        else:
            out.append(1.0 - min(1.0, errors / n_ref))
    return out


def _keyword_set(raw: object, normalizer: str = "basic") -> set[str]:
    """The clip's keywords as token strings (" t1 t2 "); keywords with no token are dropped."""
    if raw is None:
        return set()
    items = [raw] if isinstance(raw, str) else list(raw)  # type: ignore[call-overload]
    return {token_string(t) for t in (tokens(k, normalizer) for k in items) if t}


@register("keyword")
def keyword(hyps: list[str], refs: list[str], metas: list[dict]) -> list[float | None]:
    """R2, in [0, 1]: keyword (hotword) precision/recall mean; ``None`` without keywords.

    K = ``meta["keywords"]``, normalised like the texts, under the batch's normaliser (a keyword that
    normalises to nothing is ignored). A keyword *occurs* in a text when its tokens are a contiguous run of the
    text's tokens. K_ref, K_hyp = keywords occurring in ref, hyp;
    recall = |K_ref ∩ K_hyp| / |K_ref| (1 if K_ref is empty),
    precision = |K_ref ∩ K_hyp| / |K_hyp| (1 if K_hyp is empty); reward = (precision + recall) / 2.
    """
    out: list[float | None] = []
    norm = active_normalizer()
    for hyp, ref, meta in zip(hyps, refs, metas):
        kws = _keyword_set(meta.get("keywords"), norm)
        if not kws:
            out.append(None)
            continue
        hs, rs = token_string(tokens(hyp, norm)), token_string(tokens(ref, norm))
        in_ref = {k for k in kws if k in rs}
        in_hyp = {k for k in kws if k in hs}
        both = len(in_ref & in_hyp)
        recall = both / len(in_ref) if in_ref else 1.0
        precision = both / len(in_hyp) if in_hyp else 1.0
        out.append((precision + recall) / 2)
    return out


def repetition_loops(toks: tuple[str, ...] | list[str]) -> list[tuple[int, int, int]]:
    """Repetition loops as (start token, unit length, total tokens), left to right, non-overlapping.

    A loop is a unit of 1-4 tokens repeated at least 3 times in a row, found by a
    regular expression over the space-joined tokens (shortest unit first).
    """
    if len(toks) < 3 or len(set(toks)) == len(toks):
        return []
    s = " ".join(toks) + " "
    loops = []
    for m in _LOOP.finditer(s):
        unit = m.group(1).count(" ")
        loops.append((s.count(" ", 0, m.start()), unit, m.group(0).count(" ")))
    return loops


def hallucinated_tokens(hyp_toks: tuple[str, ...], ref_toks: tuple[str, ...]) -> int:
    """H of R3: the hypothesis tokens counted as hallucinated (each token at most once).

    Empty reference: every hypothesis token. Otherwise the union of (a) the tokens of
    each repetition loop beyond its first unit, for loops whose unit does not also loop
    (>= 3 times in a row) in the reference, and (b) the tokens beyond 2 * N_ref + 2.
    """
    n_ref, n_hyp = len(ref_toks), len(hyp_toks)
    if n_ref == 0:
        return n_hyp
    cap = 2 * n_ref + 2
    h = max(0, n_hyp - cap)
    ref_s = None
    for start, unit, total in repetition_loops(hyp_toks):
        if ref_s is None:
            ref_s = token_string(ref_toks)
        if token_string(hyp_toks[start : start + unit] * 3) in ref_s:
            continue  # the reference loops the same way: a real repetition
        h += max(0, min(start + total, cap) - (start + unit))
    return h


@register("hallucination")
def hallucination(hyps: list[str], refs: list[str], metas: list[dict]) -> list[float | None]:
    """R3, in [-1, 0]: ``-min(1, H / max(1, N_ref))``, H = hallucinated token count.

    H = every hypothesis token when the reference is empty (noise-only clip: any
    output gives -1); otherwise the tokens of the hypothesis's repetition loops (a
    unit of 1-4 tokens repeated >= 3 times in a row) beyond their first occurrence,
    counted only where the reference has no such loop (the same unit repeated >= 3
    times), plus the hypothesis tokens beyond 2 * N_ref + 2 (a token that is both is
    counted once).
    """
    out: list[float | None] = []
    for hyp, ref in zip(hyps, refs):
        ref_t = tokens(ref)
        h = hallucinated_tokens(tokens(hyp), ref_t)
        out.append(-min(1.0, h / max(1, len(ref_t))) if h else 0.0)
    return out
