"""The embedding-space CTC of `funrl.sft_embed_ctc`: scores by hand, the loss against a brute-force sum over
alignments, and that minimising it moves audio vectors onto the target tokens' embeddings."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from safetensors.torch import save_file

from funrl.sft_embed_ctc import HEAD_FILE, EmbedCtc, load_head, save_head

EMB = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-1.0, -1.0]])  # 4 tokens in 2-D


def test_logits_are_negative_squared_distances_to_the_blank_then_each_candidate() -> None:
    head = EmbedCtc(EMB, [2, 0])  # candidates: token 0, token 2 (sorted); blank = their mean (2, 1.5)
    a = torch.tensor([[1.0, 1.0]])
    # blank (2, 1.5): 1 + 0.25; token 0 (1, 0): 0 + 1; token 2 (3, 3): 4 + 4
    assert head.logits(a).tolist() == [[-1.25, -1.0, -8.0]]
    assert head.index == {0: 1, 2: 2}


def _brute_force_ctc(log_probs: torch.Tensor, target: list[int]) -> float:
    """-log of the summed probability of every frame labelling that collapses to ``target`` (blank = 0)."""
    t_len, n_cls = log_probs.shape
    total = 0.0
    for path in itertools.product(range(n_cls), repeat=t_len):
        collapsed = [c for i, c in enumerate(path) if c != 0 and (i == 0 or path[i - 1] != c)]
        if collapsed == target:
            total += math.exp(sum(float(log_probs[t, c]) for t, c in enumerate(path)))
    return -math.log(total)


def test_loss_equals_the_brute_force_sum_over_alignments_per_target_token() -> None:
    torch.manual_seed(0)
    head = EmbedCtc(EMB, [0, 1, 2, 3])
    audio = [torch.randn(4, 2), torch.randn(3, 2)]
    targets = [[1, 1], [3]]  # a repeated token needs a blank between its two frames
    got = float(head(audio, targets).detach())
    want = []
    for a, tgt in zip(audio, targets):
        lp = head.logits(a).detach().log_softmax(-1)
        want.append(_brute_force_ctc(lp, [head.index[t] for t in tgt]) / len(tgt))
    assert got == pytest.approx(sum(want) / len(want), rel=1e-5)


def test_tokens_first_seen_in_a_batch_join_the_candidates() -> None:
    head = EmbedCtc(EMB, [0])
    loss = head([torch.zeros(3, 2)], [[3, 0]])
    assert torch.isfinite(loss)
    assert head.index == {0: 1, 3: 2}
    assert torch.equal(head.rows, EMB[[0, 3]])


def test_minimising_it_makes_the_nearest_embeddings_of_the_audio_vectors_spell_the_transcript() -> None:
    torch.manual_seed(1)
    head = EmbedCtc(EMB, [0, 1, 2, 3])
    audio = torch.nn.Parameter(torch.randn(6, 2) * 0.1)
    opt = torch.optim.Adam([audio, *head.parameters()], lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        head([audio], [[2, 0, 3]]).backward()
        opt.step()
    classes = head.logits(audio.detach()).argmax(-1).tolist()
    collapsed = [c for i, c in enumerate(classes) if c != 0 and (i == 0 or classes[i - 1] != c)]
    assert collapsed == [head.index[t] for t in (2, 0, 3)]


def test_greedy_reads_the_nearest_class_per_vector_merging_repeats_and_dropping_blanks() -> None:
    head = EmbedCtc(EMB, [2, 0])  # classes: blank (2, 1.5), token 0 (1, 0), token 2 (3, 3)
    # nearest: token 2, token 2 (merged), blank, token 2 (again: a blank separates), token 0, blank
    audio = torch.tensor([[3.0, 3.0], [2.9, 3.1], [2.0, 1.5], [3.0, 2.9], [1.0, 0.1], [2.0, 1.4]])
    assert head.greedy(audio) == [2, 2, 0]
    assert head.greedy(torch.tensor([[2.0, 1.5]])) == []


def test_too_few_frames_for_the_tokens_count_zero_not_inf() -> None:
    head = EmbedCtc(EMB, [0, 1])
    assert float(head([torch.zeros(1, 2)], [[0, 1]]).detach()) == 0.0


def test_a_negative_weight_is_refused_naming_the_key() -> None:
    from funrl.config import ConfigError
    from funrl.sft_config import SftOptimConfig

    with pytest.raises(ConfigError, match="embed_ctc_weight"):
        SftOptimConfig(embed_ctc_weight=-1.0)


def test_saved_tokens_rebuild_the_same_classes_after_lazy_additions() -> None:
    head = EmbedCtc(EMB, [2, 0])
    head(torch.zeros(1, 4, 2).unbind(0), [[3, 1]])  # 1 and 3 join lazily, in sorted order
    assert head.tokens() == [0, 2, 1, 3]
    again = EmbedCtc(EMB, [2, 0])
    again.extend(head.tokens())  # what a resumed SFT run does with the checkpoint's list
    assert again.index == head.index and torch.equal(again.rows, head.rows)


def test_a_saved_head_restores_its_blank_and_candidates_and_refuses_another_models(tmp_path) -> None:
    head = EmbedCtc(EMB, [2, 0, 1])
    with torch.no_grad():
        head.blank.copy_(torch.tensor([5.0, -5.0]))
    path = save_head(head, tmp_path)
    fresh = EmbedCtc(EMB, [3])  # another data set's candidates: its blank starts at row 3, (-1, -1)
    load_head(fresh, path)
    assert fresh.blank.tolist() == [5.0, -5.0] and fresh.tokens() == [3, 0, 1, 2]
    assert fresh.logits(torch.tensor([[5.0, -5.0]]))[0, 0] == 0.0  # on the blank: distance 0
    blank_only = tmp_path / "old" / HEAD_FILE  # no candidate tokens: not a head file of save_head's
    blank_only.parent.mkdir()
    save_file({"blank": torch.tensor([1.0, 2.0])}, str(blank_only))
    with pytest.raises(ValueError, match=f"{HEAD_FILE}: not the embedding CTC of this model"):
        load_head(fresh, blank_only)
    wider = EmbedCtc(torch.zeros(4, 3), [0])
    with pytest.raises(ValueError, match=f"{HEAD_FILE}: not the embedding CTC of this model"):
        load_head(wider, path)
