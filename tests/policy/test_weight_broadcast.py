"""policy.weight_broadcast: a stateless gloo group of a sender and two receivers (threads of this process, no
default process group), the sender's buckets and the receivers' buckets cut from the description alone."""

from __future__ import annotations

import threading

import torch

from policy.buckets import iter_buckets
from policy.distributed import free_port
from policy.weight_broadcast import broadcast_buckets, describe, open_group, receive_buckets


def _weights() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    shapes = {"embed": (50, 8), "layers.0.q": (8, 8), "layers.0.norm": (8,), "layers.1.q": (8, 8), "head": (50, 8)}
    return [(name, torch.randn(*shape, generator=g)) for name, shape in shapes.items()]


def test_receivers_get_every_tensor_bit_exact_in_the_senders_buckets_without_a_default_group():
    weights, bucket_bytes, port = _weights(), 700, free_port()  # 1600-byte tensors alone, small ones together
    meta = describe(weights)
    assert meta[2] == ("layers.0.norm", (8,), "float32")
    got: dict[int, list] = {}
    errors: list[BaseException] = []

    def receiver(rank: int) -> None:
        try:
            group = open_group("127.0.0.1", port, rank, 3, "gloo", 30.0)
            got[rank] = list(receive_buckets(group, meta, bucket_bytes, torch.device("cpu")))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=receiver, args=(r,)) for r in (1, 2)]
    for t in threads:
        t.start()
    group = open_group("127.0.0.1", port, 0, 3, "gloo", 30.0)
    stats = broadcast_buckets(group, iter_buckets(weights, bucket_bytes))
    for t in threads:
        t.join(60)
    assert not errors, errors
    want_buckets = [[n for n, _ in b] for b in iter_buckets(weights, bucket_bytes)]
    assert want_buckets == [["embed"], ["layers.0.q", "layers.0.norm", "layers.1.q"], ["head"]]  # 256+32+256 B
    assert stats["buckets"] == 3 and stats["bytes"] == sum(t.numel() * 4 for _, t in weights)
    for rank in (1, 2):
        assert [[n for n, _ in b] for b in got[rank]] == want_buckets
        received = dict(kv for b in got[rank] for kv in b)
        for name, tensor in weights:
            assert torch.equal(received[name], tensor), (rank, name)
    assert not torch.distributed.is_initialized()  # the FSDP group of a learner is never touched


def test_bf16_weights_travel_in_bf16():
    weights = [(n, t.to(torch.bfloat16)) for n, t in _weights()]
    meta, port, got = describe(weights), free_port(), []
    thread = threading.Thread(
        target=lambda: got.extend(
            receive_buckets(open_group("127.0.0.1", port, 1, 2, "gloo", 30.0), meta, 1 << 20, torch.device("cpu"))
        )
    )
    thread.start()
    stats = broadcast_buckets(open_group("127.0.0.1", port, 0, 2, "gloo", 30.0), iter_buckets(weights, 1 << 20))
    thread.join(60)
    assert stats["bytes"] == sum(t.numel() * 2 for _, t in weights) and len(got) == 1
    assert all(torch.equal(r, w) and r.dtype == torch.bfloat16 for (_, r), (_, w) in zip(got[0], weights))
