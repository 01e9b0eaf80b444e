"""rollout.weight_sync: module groups, trailing-group split (no vLLM); the buckets: tests/policy/test_buckets.py."""

import pytest
import torch

from rollout.weight_sync import module_group, split_trailing_group


def _t(numel: int, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(numel, dtype=dtype)


@pytest.mark.parametrize(
    "name, group",
    [
        ("model.layers.3.self_attn.q_proj.weight", "model.layers.3"),
        ("model.layers.12.mlp.experts.7.w1.weight", "model.layers.12"),
        ("model.embed_tokens.weight", "model.embed_tokens"),
        ("lm_head.weight", "lm_head"),
        ("model.norm.weight", "model.norm"),
        ("transformer.h.0.attn.c_attn.bias", "transformer.h.0"),
        ("scale", "scale"),
    ],
)
def test_module_group_is_the_layer_or_the_module(name, group):
    assert module_group(name) == group


def test_split_trailing_group_holds_back_the_last_layer():
    t = _t(1)
    items = [
        ("model.embed_tokens.weight", t),
        ("model.layers.0.a.weight", t),
        ("model.layers.0.b.weight", t),
        ("model.layers.1.a.weight", t),
        ("model.layers.1.b.weight", t),
    ]
    ready, rest = split_trailing_group(items)
    assert [n for n, _ in ready] == [n for n, _ in items[:3]]
    assert [n for n, _ in rest] == ["model.layers.1.a.weight", "model.layers.1.b.weight"]
    ready, rest = split_trailing_group(items[3:])  # one group only: nothing is ready yet
    assert ready == [] and len(rest) == 2
    assert split_trailing_group([]) == ([], [])
