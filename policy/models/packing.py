"""Log-probs of G completions per prompt with each prompt run once ("shared-prompt packing").

GRPO scores G hypotheses of one clip, and the clip's prompt (``[prefix | audio | suffix]``, ~90 positions in
the demo) is usually longer than a hypothesis. `sequence_logprobs` runs ``prompt ++ completion`` for every
row, so the prompt is recomputed G times; here each distinct prompt becomes one packed sequence

    [left pad | prompt | completion_1[:-1] | completion_2[:-1] | ... | right pad]

with a 4-D additive attention mask: the prompt is causal as usual, a completion segment sees the whole
prompt and its own earlier positions (never another segment), and position ids restart after the prompt
in every segment. So every log-prob equals the unpacked, unpadded computation (to float round-off), and
gradients reach the prompt (and the audio encoder behind it) through each segment's attention. The first
token of every completion is predicted from the prompt's last position, shared by the group. Segments
keep only each row's own length (up to its last unmasked token), not the micro-batch's longest.

A custom 4-D mask is a documented transformers input (it is passed through unchanged to the ``sdpa`` and
``eager`` attention functions); flash-attention kernels do not take one, so packing is for those two.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

PACKABLE_ATTENTION = ("sdpa", "eager")  # attention functions that apply a custom 4-D mask as given


def row_lengths(mask: Tensor) -> list[int]:
    """Per row: 1 + the index of its last non-zero mask entry (0 for an all-zero row)."""
    t = mask.shape[1]
    idx = torch.arange(1, t + 1, device=mask.device).expand_as(mask)
    return [int(v) for v in (idx * mask.ne(0)).amax(dim=1).tolist()] if t else [0] * mask.shape[0]


def token_logprobs(logits: Tensor, ids: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """``[N, T]`` log-probs of ``ids`` under ``softmax(logits / temperature)`` (logits ``[N, T, V]``, float32),
    0 where ``mask`` is 0."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return picked * mask.to(dtype=picked.dtype)


def _groups(index: Sequence[int], n_prompts: int) -> list[list[int]]:
    groups: list[list[int]] = [[] for _ in range(n_prompts)]
    for row, p in enumerate(index):
        if not 0 <= p < n_prompts:
            raise ValueError(f"packed_logprobs: prompt index {p} of row {row} is outside 0..{n_prompts - 1}")
        groups[p].append(row)
    return groups


def packed_logprobs(
    llm: nn.Module, prompts: Sequence[Tensor], index: Sequence[int], ids: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """``[N, T]`` log-probs of ``ids`` (right-padded) after ``prompts[index[i]]``; 0 where ``mask`` is 0.

    ``prompts``: the distinct prompts ``[L_p, H]``; ``index``: the prompt of each of the N rows. Equal to
    `AudioLLM.sequence_logprobs` with ``prompts[index[i]]`` as row i's prompt.
    """
    n, t = ids.shape
    if len(index) != n:
        raise ValueError(f"packed_logprobs: {len(index)} prompt indices for {n} completion rows")
    attn_impl = getattr(getattr(llm, "config", None), "_attn_implementation", None) or "sdpa"
    if attn_impl not in PACKABLE_ATTENTION:
        raise ValueError(
            f"packed_logprobs: the LLM uses {attn_impl!r} attention, which ignores a 4-D mask; "
            "packing needs 'sdpa' or 'eager' (set learner.share_prompts=false)"
        )
    embedding = llm.get_input_embeddings()
    device, dtype = embedding.weight.device, embedding.weight.dtype
    ids, mask = ids.to(device), mask.to(device)
    lengths = row_lengths(mask)
    groups = [g for g in _groups(index, len(prompts)) if g]
    used = [index[g[0]] for g in groups]
    p_max = max(int(prompts[p].shape[0]) for p in used)
    seg_total = [sum(max(lengths[r] - 1, 0) for r in g) for g in groups]
    width = p_max + max(seg_total)
    text = embedding(ids[:, :-1])  # [n, t - 1, H]; empty at t = 1, but see `anchor` below

    inputs = torch.zeros(len(groups), width, embedding.weight.shape[-1], device=device, dtype=dtype)
    positions = torch.zeros(len(groups), width, dtype=torch.long, device=device)
    segment = torch.full((len(groups), width), -1, dtype=torch.long, device=device)  # -1 pad, 0 prompt, j+1
    where = torch.zeros(n, max(t, 1), dtype=torch.long, device=device)  # kept-logit column per token
    seq_of_row = torch.zeros(n, dtype=torch.long, device=device)
    for s, (p, rows) in enumerate(zip(used, groups)):
        plen = int(prompts[p].shape[0])
        inputs[s, p_max - plen : p_max] = prompts[p].to(device=device, dtype=dtype)
        positions[s, p_max - plen : p_max] = torch.arange(plen, device=device)
        segment[s, p_max - plen : p_max] = 0
        start = p_max
        for j, r in enumerate(rows):
            seq_of_row[r] = s
            k = max(lengths[r] - 1, 0)  # inputs of row r: its tokens 0..l-2; token 0 comes from the prompt
            if k:
                inputs[s, start : start + k] = text[r, :k]
                positions[s, start : start + k] = torch.arange(plen, plen + k, device=device)
                segment[s, start : start + k] = j + 1
                where[r, 1 : k + 1] = torch.arange(start - p_max + 1, start - p_max + 1 + k, device=device)
            start += k
    inputs = anchor(inputs, text)

    q, kv = segment.unsqueeze(2), segment.unsqueeze(1)  # [S, W, 1], [S, 1, W]
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    allowed = causal & (kv >= 0) & (q >= 0) & ((kv == 0) | (kv == q))
    allowed |= torch.eye(width, dtype=torch.bool, device=device)  # pad rows: no all-masked softmax
    attn = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)

    keep = width - p_max + 1  # logits from the prompts' last position (p_max - 1) onwards
    out = llm(
        inputs_embeds=inputs,
        attention_mask=attn.unsqueeze(1),
        position_ids=positions,
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits[:, -keep:]  # [S, keep, V]
    per_row = logits[seq_of_row.unsqueeze(1).expand(-1, where.shape[1]), where][:, :t]  # [N, T, V]
    return token_logprobs(per_row, ids, mask, temperature)


def anchor(inputs: Tensor, text: Tensor) -> Tensor:
    """``inputs``, with the completion-token embeddings ``text`` made part of the autograd graph even when
    none of them is used (every completion 1 token long: ``text`` is empty). Without it the input embedding
    gets no gradient on such a micro-batch, and an FSDP rank whose micro-batch this is would reduce-scatter
    a different set of gradients than the other ranks (a collective mismatch that aborts the job)."""
    return inputs + text.sum() * 0 if text.requires_grad else inputs
