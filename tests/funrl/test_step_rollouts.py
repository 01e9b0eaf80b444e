"""The driver's step sampling (funrl.step_rollouts.StepRollouts): in the step (run.async_steps=0) or one step off
(run.async_steps=1: step t+1 sampled in a thread while the caller updates on step t).

The engines are a scripted stand-in (embed and generate of `funrl.cluster.Cluster`); what is under test is the
driver's bookkeeping: which clips each step samples, when, on which thread, the sampler position a checkpoint
stores, and the fallback when sampling ahead fails. The real engines run it in tests/funrl/test_multinode.py.
"""

import threading

import pytest
import torch

from funrl.config import load_config
from funrl.data import ClipSampler
from funrl.step_rollouts import StepRollouts
from funrl.timing import StageTimer
from policy.messages import Clip, PromptBatch, RolloutBatch
from policy.ray_utils import WorkerError

G = 2


class ScriptedEngines:
    """Every clip gets G different hypotheses; records which clips were sampled, on which thread, with restarts or
    not. ``gate``: generate waits for it (the caller's "update" sets it); ``fail_once``: the first generate raises
    an engine failure."""

    def __init__(self, gate: threading.Event | None = None, fail_once: bool = False) -> None:
        self.calls: list[tuple[list[str], str, bool]] = []
        self.gate, self.fail_once = gate, fail_once

    def embed(self, clips) -> PromptBatch:
        return PromptBatch(tuple(clips), tuple(torch.zeros(2, 4) for _ in clips))

    def generate(self, prompts: PromptBatch, seed: int | None = None, restarts: bool = True) -> RolloutBatch:
        self.calls.append(([c.text for c in prompts.clips], threading.current_thread().name, restarts))
        if self.gate is not None:
            assert self.gate.wait(timeout=10), "generate was not running beside the caller"
        if self.fail_once:
            self.fail_once = False
            raise WorkerError("rollout worker 0 died", actor="rollout worker 0")
        B = len(prompts.clips)
        texts = tuple(tuple(f"{c.text} {g}" for g in range(G)) for c in prompts.clips)
        mask = torch.ones(B, G, 3)
        return RolloutBatch(prompts, torch.ones(B, G, 3, dtype=torch.long), mask, -mask, texts, policy_version=0)


def _setup(async_steps: int, engines: ScriptedEngines, steps: int = 3):
    cfg = load_config(
        None,
        [f"run.async_steps={async_steps}", "run.clips_per_step=2", f"rollout.n={G}", f"run.steps={steps}"],
    )
    clips = [Clip(f"/{i}.wav", f"clip{i}", "en") for i in range(6)]
    sampler = ClipSampler(clips, 2, seed=0, shuffle=False)
    return StepRollouts(cfg, engines, sampler), sampler


def _texts(sampled) -> list[str]:
    return [c.text for c in sampled.batch.rollout.prompts.clips]


def test_sync_mode_samples_each_step_in_the_step_and_starts_nothing_ahead():
    engines = ScriptedEngines()
    rollouts, sampler = _setup(0, engines)
    t = StageTimer()
    assert _texts(rollouts.take(1, t)) == ["clip0", "clip1"]
    rollouts.start(2)
    assert len(engines.calls) == 1 and set(t.seconds) == {"embed", "generate", "score"}
    assert rollouts.position(2) == sampler.state_dict()  # step 2's clips not drawn yet
    assert _texts(rollouts.take(2, StageTimer())) == ["clip2", "clip3"]
    assert all(thread == threading.current_thread().name and restarts for _, thread, restarts in engines.calls)


def test_one_step_off_samples_the_next_step_in_a_thread_beside_the_update_and_checkpoints_before_its_clips():
    gate = threading.Event()
    engines = ScriptedEngines(gate)
    rollouts, sampler = _setup(1, engines)
    gate.set()
    assert _texts(rollouts.take(1, StageTimer())) == ["clip0", "clip1"]  # the first step: nothing sampled ahead
    gate.clear()
    drawn_before = sampler.state_dict()
    rollouts.start(2)  # returns at once although generate blocks until the "update" below is done
    gate.set()  # the update
    rollouts.wait()
    clips, thread, restarts = engines.calls[-1]
    assert clips == ["clip2", "clip3"] and thread.startswith("funrl-sample-ahead") and not restarts
    assert rollouts.position(2) == drawn_before != sampler.state_dict()  # a checkpoint now redraws step 2's clips
    t = StageTimer()
    sampled = rollouts.take(2, t)
    assert _texts(sampled) == ["clip2", "clip3"] and len(engines.calls) == 2  # not sampled again
    assert set(t.seconds) == {"wait"} and set(sampled.seconds) == {"embed", "generate", "score"}
    rollouts.start(4)  # past run.steps=3: nothing
    rollouts.wait()
    assert len(engines.calls) == 2
    rollouts.close()


def test_sampling_ahead_that_fails_in_an_engine_is_sampled_again_in_the_step_from_the_same_clips():
    engines = ScriptedEngines(fail_once=True)
    rollouts, sampler = _setup(1, engines)
    rollouts.start(1)
    rollouts.wait()  # failed; kept for take
    sampled = rollouts.take(1, StageTimer())
    assert [c for c, _, _ in engines.calls] == [["clip0", "clip1"], ["clip0", "clip1"]]
    assert engines.calls[-1][2]  # this time with engine restarts
    assert _texts(sampled) == ["clip0", "clip1"]
    assert _texts(rollouts.take(2, StageTimer())) == ["clip2", "clip3"]  # the sampler did not skip a batch
    rollouts.close()


def test_an_error_that_is_not_an_engine_failure_reaches_the_caller():
    class Broken(ScriptedEngines):
        def embed(self, clips):
            raise ValueError("bad clip")

    rollouts, _ = _setup(1, Broken())
    rollouts.start(1)
    with pytest.raises(ValueError, match="bad clip"):
        rollouts.take(1, StageTimer())
    rollouts.close()
