"""CTC in the LLM's embedding space (``optim.embed_ctc_weight``): a training-only loss on the adapter's output.

An adapter between a pretrained speech encoder and a pretrained LLM (SLAM-ASR) starts random: its vectors mean
nothing to the LLM, and cross-entropy alone has to discover both what to put there and how the LLM should read
it. On few CPU cores that takes thousands of steps. This loss gives the adapter a direct target: each audio
vector ``a_t`` scores every candidate token ``v`` by its negative squared distance to the LLM's own input
embedding ``e_v``,

    logit(t, v) = -||a_t - e_v||^2,        plus one learned "blank" vector b for frames that carry no token,

and CTC aligns the frames to the transcript's tokens. The adapter learns to write, in order, vectors near the
embeddings of the words it hears: text the LLM already knows how to copy. The candidates are the tokens of the
training transcripts (the softmax over all 49 k SmolLM2 tokens costs ~25x more for the same pull); the LLM's
embeddings stay frozen and the blank vector is used only here. The SFT writes it beside the model it saves
(``embed_ctc.safetensors``: the blank and the candidate tokens; inference ignores it), so an SFT that starts
from that model folder goes on with a trained blank instead of a fresh one (`load_head`). A token first seen
in a batch (a joined pair's transcript can tokenise differently) joins the candidates then.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

HEAD_FILE = "embed_ctc.safetensors"  # in a model folder: the blank vector [D] and the candidate token ids [C]


class EmbedCtc(nn.Module):
    """CTC of audio vectors against token ids, scored by distance to ``embedding`` rows (see module doc)."""

    def __init__(self, embedding: Tensor, candidates: Iterable[int]) -> None:
        super().__init__()
        self.embedding = embedding.detach()  # [V, D], the LLM's own (frozen) input embeddings
        self.index: dict[int, int] = {}  # token id -> class (class 0 is the blank)
        self.rows = torch.zeros(0, embedding.shape[1], device=embedding.device)  # [C, D]
        self._add(candidates)
        if not self.index:
            raise ValueError("embed CTC needs at least one candidate token (the training transcripts are empty)")
        self.blank = nn.Parameter(self.rows.mean(0))  # [D]

    def _add(self, ids: Iterable[int]) -> None:
        new = sorted({int(i) for i in ids} - self.index.keys())
        if not new:
            return
        self.index.update({tok: len(self.index) + 1 + k for k, tok in enumerate(new)})
        self.rows = torch.cat([self.rows, self.embedding[new].float()])

    def tokens(self) -> list[int]:
        """The candidate token ids in class order (class k + 1 is ``tokens()[k]``)."""
        return sorted(self.index, key=self.index.__getitem__)

    def extend(self, tokens: Iterable[int]) -> None:
        """Add ``tokens`` one at a time in the given order (a saved `tokens()` list rebuilds the same classes)."""
        for tok in tokens:
            self._add((tok,))

    def logits(self, audio: Tensor) -> Tensor:
        """``[..., 1 + C]`` negative squared distances of ``audio [..., D]`` to the blank and each candidate."""
        a = audio.float()
        a_sq = a.pow(2).sum(-1, keepdim=True)
        to_rows = a_sq - 2 * a @ self.rows.T + self.rows.pow(2).sum(-1)
        to_blank = (a - self.blank).pow(2).sum(-1, keepdim=True)
        return -torch.cat([to_blank, to_rows], -1)

    def greedy(self, audio: Tensor) -> list[int]:
        """The token ids ``audio [T, D]`` reads as by itself: each vector's nearest class (blank or candidate),
        repeats merged, blanks dropped (greedy CTC decoding; what the adapter writes before the LLM reads it)."""
        classes = self.logits(audio).argmax(-1).tolist()
        tokens = self.tokens()
        return [tokens[c - 1] for i, c in enumerate(classes) if c != 0 and (i == 0 or c != classes[i - 1])]

    def forward(self, audio: Sequence[Tensor], targets: Sequence[Sequence[int]]) -> Tensor:
        """Mean CTC loss (per target token, as ``F.ctc_loss``'s ``mean``) of each clip's audio vectors
        ``[T_i, D]`` against its token ids; a clip too short for its tokens counts 0 (``zero_infinity``)."""
        if len(audio) != len(targets):
            raise ValueError(f"{len(audio)} audio rows but {len(targets)} targets")
        self._add(t for row in targets for t in row)
        lengths = torch.tensor([a.shape[0] for a in audio])
        padded = nn.utils.rnn.pad_sequence(list(audio), batch_first=True)  # [B, T, D]
        log_probs = self.logits(padded).log_softmax(-1).transpose(0, 1)  # [T, B, 1 + C]
        return ctc_mean([[self.index[t] for t in row] for row in targets], log_probs, lengths, blank=0)


def ctc_mean(targets: Sequence[Sequence[int]], log_probs: Tensor, lengths: Tensor, blank: int) -> Tensor:
    """``F.ctc_loss`` (``mean``: per target token, then over the batch) of ``log_probs [T, B, V]`` with ``lengths
    [B]`` frames against each row's class ids; a row too short for its targets counts 0 (``zero_infinity``)."""
    flat = torch.tensor([c for row in targets for c in row], dtype=torch.long)
    return F.ctc_loss(
        log_probs,
        flat,
        lengths.cpu(),
        torch.tensor([len(r) for r in targets]),
        blank=blank,
        reduction="mean",
        zero_infinity=True,
    )


def make_embed_ctc(model, texts: Iterable[str]) -> EmbedCtc:
    """An `EmbedCtc` on ``model``'s LLM input embeddings, its candidates the tokens of ``texts``."""
    tok = model.tokenizer
    ids = [i for t in texts if t for i in tok(t, add_special_tokens=False)["input_ids"]]
    return EmbedCtc(model.get_input_embeddings().weight, ids)


def save_head(head: EmbedCtc, folder: Path) -> Path:
    """Write ``head``'s blank vector and candidate tokens to ``folder/HEAD_FILE`` (temp file + rename)."""
    path = Path(folder) / HEAD_FILE
    tmp = path.with_name(f".{HEAD_FILE}.tmp-{os.getpid()}")
    tensors = {"blank": head.blank.detach().cpu().clone(), "tokens": torch.tensor(head.tokens(), dtype=torch.long)}
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    return path


FRESH_HEAD = "delete the file to start the CTC head afresh"


def read_head(path: Path, remedy: str = FRESH_HEAD) -> dict[str, torch.Tensor]:
    """The tensors of a `save_head` file, or an error naming ``path`` and ``remedy``."""
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors' own error names no file
        raise ValueError(f"{path}: unreadable ({exc}); {remedy}") from exc


def load_head(head: EmbedCtc, path: Path) -> None:
    """Continue ``head`` from a `save_head` file: its candidates join ``head``'s, its blank replaces the fresh one."""
    apply_head(head, read_head(path), path)


def apply_head(head: EmbedCtc, saved: dict[str, torch.Tensor], path: Path, remedy: str = FRESH_HEAD) -> None:
    """`load_head` of tensors already read from ``path`` (named, with ``remedy``, when they do not fit ``head``)."""
    blank, tokens = saved.get("blank"), saved.get("tokens")
    vocab, width = head.embedding.shape
    if blank is None or tokens is None or blank.shape != (width,) or (tokens.numel() and int(tokens.max()) >= vocab):
        raise ValueError(
            f"{path}: not the embedding CTC of this model (expected a blank of width {width} and token ids below "
            f"{vocab}); {remedy}"
        )
    head.extend(tokens.tolist())
    with torch.no_grad():
        head.blank.copy_(blank)
