"""The learner's big-model switches on one in-process FSDP2 rank (gloo, CPU), each against the same update
without it: ``learner.activation_checkpointing`` (each decoder layer recomputed in backward, same gradients),
``learner.reshard_after_forward=false`` (gathered weights kept for backward, same update) and
``learner.ref_dtype=bfloat16`` (full fine-tuning's frozen reference held in bf16: half its bytes, log-probs within
bf16 rounding of the fp32 reference)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from learner_ranks import learner_cfg, make_batch, one_rank_learner

pytestmark = pytest.mark.slow


def _update(model_dir, cfg, batches) -> tuple[dict[str, np.ndarray], list[float], int]:
    """Weights after the updates, their losses, and how often decoder layer 0's MLP was entered (a submodule's
    pre-hook: the recomputation replays the layer without the layer's own hooks, and stops early once the saved
    tensors are back, so a post-hook at the end could be skipped)."""
    with one_rank_learner(model_dir, cfg) as learner:
        calls = []
        hook = learner.model.decoder_layers()[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
        losses = [learner.update(b).loss for b in batches]
        hook.remove()
        weights = {n: p.detach().full_tensor().numpy().copy() for n, p in learner.root.named_parameters()}
    return weights, losses, len(calls)


@pytest.fixture(scope="module")
def plain(tiny_model_dir):
    return _update(tiny_model_dir, learner_cfg(ppo_epochs=1, micro_batch=4), [make_batch(1), make_batch(2)])


def _assert_same_update(got, want, atol: float = 1e-6) -> None:
    assert got[1] == pytest.approx(want[1], abs=atol)
    assert got[0].keys() == want[0].keys()
    for name, w in want[0].items():
        np.testing.assert_allclose(got[0][name], w, rtol=0, atol=atol, err_msg=name)


def test_activation_checkpointing_recomputes_each_layer_and_gives_the_same_update(tiny_model_dir, plain):
    cfg = replace(learner_cfg(ppo_epochs=1, micro_batch=4), activation_checkpointing=True)
    got = _update(tiny_model_dir, cfg, [make_batch(1), make_batch(2)])
    _assert_same_update(got, plain)
    # every forward that has a backward runs layer 0 again (the recomputation); the no-grad ones do not
    assert got[2] > plain[2], (got[2], plain[2])


def test_keeping_gathered_weights_after_forward_gives_the_same_update(tiny_model_dir, plain):
    cfg = replace(learner_cfg(ppo_epochs=1, micro_batch=4), reshard_after_forward=False)
    with one_rank_learner(tiny_model_dir, cfg) as learner:
        layer = learner.model.decoder_layers()[0]
        flags = layer._get_fsdp_state()._fsdp_param_group.post_forward_mesh_info  # None: not resharded
        assert flags is None
    _assert_same_update(_update(tiny_model_dir, cfg, [make_batch(1), make_batch(2)]), plain)


def test_bf16_reference_halves_its_bytes_and_stays_within_bf16_rounding(tiny_model_dir):
    batch = make_batch(1)
    refs, nbytes = {}, {}
    for dtype in ("float32", "bfloat16"):
        with one_rank_learner(tiny_model_dir, replace(learner_cfg(), ref_dtype=dtype)) as learner:
            refs[dtype] = learner.logprobs(batch, reference=True)
            nbytes[dtype] = sum(p.numel() * p.element_size() for p in learner.ref_root.parameters())
            stats = learner.update(batch)
            assert np.isfinite(stats.loss) and np.isfinite(stats.kl)
    assert nbytes["bfloat16"] * 2 == nbytes["float32"]
    mask = batch.rollout.mask.bool()
    diff = (refs["bfloat16"] - refs["float32"]).abs()[mask]
    assert 0 < float(diff.max()) < 0.1, float(diff.max())  # bf16 has 8 bits of mantissa: ~1e-2, never 0
    assert torch.equal(refs["float32"][~mask], torch.zeros_like(refs["float32"][~mask]))
