"""The driver's dynamic sampling (funrl.step_rollouts.sample_groups): flat groups dropped, the batch refilled with
extra rounds of clips up to run.clips_per_step (DAPO), bounded by run.max_refill_rounds; truncation modes.

The engines are a scripted stand-in (`ScriptedEngines`: embed and generate only); what is under test is the
driver's bookkeeping: which groups are sampled, kept, trained on and logged. The real engines run the same
path in tests/funrl/test_variants_e2e.py.
"""

import pytest
import torch

from funrl.config import load_config
from funrl.step_rollouts import sample_groups
from funrl.timing import StageTimer
from policy.messages import Clip, PromptBatch, RolloutBatch

G = 4


class ScriptedEngines:
    """embed/generate of `funrl.cluster.Cluster`: a clip whose text starts with "flat" gets G equal hypotheses
    (a flat group), any other G different ones; a text starting with "long" is cut at max_new_tokens."""

    def __init__(self) -> None:
        self.embedded: list[str] = []

    def embed(self, clips) -> PromptBatch:
        self.embedded += [c.text for c in clips]
        return PromptBatch(tuple(clips), tuple(torch.zeros(2, 4) for _ in clips))

    def generate(self, prompts: PromptBatch, seed: int | None = None, restarts: bool = True) -> RolloutBatch:
        texts = tuple(
            (c.text,) * G
            if c.text.startswith("flat")
            else tuple(c.text.split()[: g + 1] and " ".join(c.text.split()[: g + 1]) for g in range(G))
            for c in prompts.clips
        )
        B = len(texts)
        truncated = torch.tensor([[c.text.startswith("long")] * G for c in prompts.clips])
        mask = torch.ones(B, G, 3)
        return RolloutBatch(prompts, torch.ones(B, G, 3, dtype=torch.long), mask, -mask, texts, truncated=truncated)


def _clips(*texts):
    return [Clip(f"/{i}.wav", t, "en") for i, t in enumerate(texts)]


def _cfg(**kw):
    base = {"run.clips_per_step": 3, "rollout.n": G, "rollout.max_new_tokens": 3, "run.dynamic_sampling": "true"}
    base.update(kw)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def test_refill_tops_the_batch_up_to_clips_per_step_non_flat_groups():
    engines = ScriptedEngines()
    rounds = iter([_clips("flat a", "one two three four", "flat b"), _clips("five six seven eight", "x y z w")])
    scored, batch, info = sample_groups(
        _cfg(**{"run.max_refill_rounds": 2}),
        engines,
        _clips("flat x", "a b c d", "flat y"),
        lambda: next(rounds),
        StageTimer(),
    )
    assert [c.text for c in batch.rollout.prompts.clips] == ["a b c d", "one two three four", "five six seven eight"]
    assert info == {"dropped": 4, "refill_rounds": 2, "trained": 3}
    assert len(scored.rollout.prompts.clips) == 3 + 3 + 2  # every group sampled is logged, flat or not
    assert engines.embedded[-1] == "x y z w"  # the last round's extra group is sampled, not trained


def test_refill_stops_after_max_rounds_and_trains_on_what_is_left():
    engines = ScriptedEngines()
    scored, batch, info = sample_groups(
        _cfg(**{"run.max_refill_rounds": 1}),
        engines,
        _clips("flat x", "a b c d", "flat y"),
        lambda: _clips("flat z"),
        StageTimer(),
    )
    assert [c.text for c in batch.rollout.prompts.clips] == ["a b c d"]
    assert info == {"dropped": 3, "refill_rounds": 1, "trained": 1}


def test_drop_mode_does_not_refill_and_all_flat_trains_nothing():
    engines = ScriptedEngines()
    _, batch, info = sample_groups(
        _cfg(), engines, _clips("flat x", "flat y"), lambda: pytest.fail("refilled"), StageTimer()
    )
    assert batch is None and info == {"dropped": 2, "refill_rounds": 0, "trained": 0}


def test_truncated_mask_and_penalty_modes():
    clips = _clips("long a b c d", "a b c d")
    _, masked, _ = sample_groups(
        _cfg(**{"rollout.truncated": "mask", "run.dynamic_sampling": "false"}),
        ScriptedEngines(),
        clips,
        None,
        StageTimer(),
    )
    assert masked.rollout.mask.sum(-1).tolist() == [[0.0] * G, [3.0] * G]
    _, punished, _ = sample_groups(
        _cfg(**{"rollout.truncated": "penalty", "run.dynamic_sampling": "false"}),
        ScriptedEngines(),
        clips,
        None,
        StageTimer(),
    )
    assert punished.rewards["overlong"].tolist() == [[-1.0] * G, [0.0] * G]
    assert punished.rollout.mask.sum() == 2 * G * 3


def test_refill_needs_dynamic_sampling():
    with pytest.raises(Exception, match="run.max_refill_rounds refills what dynamic sampling drops"):
        _cfg(**{"run.max_refill_rounds": 1, "run.dynamic_sampling": "false"})
