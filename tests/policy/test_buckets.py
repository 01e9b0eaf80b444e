"""policy.buckets: bucket boundaries by hand, laziness (the one bucketing helper of the weight sync)."""

import pytest
import torch

from policy.buckets import iter_buckets, tensor_nbytes


def _t(numel: int, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(numel, dtype=dtype)


def _names(buckets):
    return [[n for n, _ in b] for b in buckets]


def test_tensor_nbytes_counts_element_bytes():
    assert tensor_nbytes(_t(10)) == 40
    assert tensor_nbytes(_t(10, torch.bfloat16)) == 20
    assert tensor_nbytes(torch.zeros(3, 4, dtype=torch.int64)) == 96


def test_buckets_close_when_the_next_tensor_would_overflow():
    # 40 + 40 = 80 fits exactly; the third 40-byte tensor starts a new bucket
    items = [("a", _t(10)), ("b", _t(10)), ("c", _t(10))]
    assert _names(iter_buckets(items, 80)) == [["a", "b"], ["c"]]
    assert _names(iter_buckets(items, 79)) == [["a"], ["b"], ["c"]]
    assert _names(iter_buckets(items, 120)) == [["a", "b", "c"]]


def test_tensor_larger_than_bucket_goes_alone():
    items = [("s1", _t(5)), ("big", _t(100)), ("s2", _t(5)), ("s3", _t(5))]  # 20, 400, 20, 20 bytes
    assert _names(iter_buckets(items, 50)) == [["s1"], ["big"], ["s2", "s3"]]


def test_mixed_dtypes_use_their_own_byte_sizes():
    items = [("f32", _t(10)), ("bf16", _t(20, torch.bfloat16)), ("f32b", _t(1))]  # 40, 40, 4
    assert _names(iter_buckets(items, 80)) == [["f32", "bf16"], ["f32b"]]


def test_empty_stream_yields_no_bucket_and_bad_size_raises():
    assert list(iter_buckets([], 10)) == []
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(iter_buckets([("a", _t(1))], 0))


def test_buckets_preserve_order_and_respect_the_limit():
    torch.manual_seed(0)
    sizes = torch.randint(1, 50, (200,)).tolist()
    items = [(f"w{i}", _t(s)) for i, s in enumerate(sizes)]
    buckets = list(iter_buckets(items, 160))
    assert [n for b in buckets for n, _ in b] == [n for n, _ in items]
    for b in buckets:
        assert len(b) == 1 or sum(tensor_nbytes(t) for _, t in b) <= 160
    # greedy: each bucket plus the next bucket's first tensor would overflow
    for cur, nxt in zip(buckets, buckets[1:]):
        assert sum(tensor_nbytes(t) for _, t in cur) + tensor_nbytes(nxt[0][1]) > 160


def test_stream_is_consumed_lazily_one_bucket_at_a_time():
    pulled = []

    def stream():
        for i in range(6):
            pulled.append(i)
            yield f"w{i}", _t(10)  # 40 bytes each, 2 per bucket

    it = iter_buckets(stream(), 80)
    assert _names([next(it)]) == [["w0", "w1"]]
    assert pulled == [0, 1, 2]  # only the tensor that closed the bucket was read ahead
    assert _names([next(it)]) == [["w2", "w3"]]
    assert pulled == [0, 1, 2, 3, 4]
