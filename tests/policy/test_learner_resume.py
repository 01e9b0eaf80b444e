"""A 2-rank FSDP2 learner (gloo, no Ray) that trains the encoder of the tiny audio-LLM, whose CTC head never gets
a gradient in GRPO: a new learner that loads its checkpoint makes the same next update as the one never stopped."""

from __future__ import annotations

import numpy as np
import pytest
from learner_ranks import ports_for_later, resume_rank_main, run_ranks, write_waves


@pytest.mark.slow
def test_resumed_encoder_training_learner_equals_the_uninterrupted_one(tiny_model_dir, tmp_path):
    waves = write_waves(tmp_path)
    ports = ports_for_later(2)
    results = run_ranks(resume_rank_main, 2, (ports, str(tiny_model_dir), waves, str(tmp_path / "ck")), 180)
    assert "__error__" not in results, results["__error__"]
    (weights, state), (got_weights, got_state) = results["uninterrupted"], results["resumed"]
    assert "model.frontend.ctc.weight" in weights and weights.keys() == got_weights.keys()
    assert all(np.array_equal(weights[k], got_weights[k]) for k in weights)
    assert state.keys() == got_state.keys() and "model.frontend.ctc.weight" in state
    for name, entry in state.items():
        assert entry.keys() == got_state[name].keys() and all(
            np.array_equal(v, got_state[name][k]) for k, v in entry.items()
        ), name
    # the CTC head never had a gradient: the state of a parameter never stepped; every other one stepped twice
    steps = {name: float(entry["step"]) for name, entry in state.items()}
    assert {n for n, s in steps.items() if s == 0} == {"model.frontend.ctc.weight", "model.frontend.ctc.bias"}
    assert {s for s in steps.values() if s != 0} == {2.0}
    ctc = state["model.frontend.ctc.weight"]
    assert not ctc["exp_avg"].any() and not ctc["exp_avg_sq"].any()
