"""Where a step's groups come from: embed -> generate -> score, in the step (``run.async_steps=0``) or one step
off (``run.async_steps=1``): step t+1's clips are embedded, sampled and scored in a driver thread while the learner
updates on step t's, on the weights the engines serve then (one version behind). The driver waits for them before
the weight sync, so the weights never change under a generation; the learner accepts a batch at most
``run.async_steps`` versions old, and the lag is logged (``policy_version.lag``). The importance weights of the
update (``learner.tis_cap``: vLLM's log-probs against the learner's) correct for it (docs/design.md#one-step-off).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field

import numpy as np

from funrl.config import TrainConfig
from funrl.timing import StageTimer
from policy.augment import at_step
from policy.messages import ScoredRollout
from policy.ray_utils import WorkerError
from policy.scoring import drop_flat_groups, score_and_advantage, select_groups
from policy.truncation import mask_truncated, rollout_penalty


@dataclass(frozen=True)
class Sampled:
    """One step's sampling: every group sampled (logged), the groups to train on, counts for the metrics."""

    scored: ScoredRollout  # every group sampled, flat ones included
    batch: ScoredRollout | None  # what the learner trains on (None: nothing left after dynamic sampling)
    info: dict[str, float]  # dropped, refill_rounds, trained
    seconds: dict[str, float] = field(default_factory=dict)  # sampled ahead: embed / generate / score wall seconds
    # (overlapped with the previous step's update; empty when sampled in the step, whose timer has them)


@dataclass(frozen=True)
class _Ahead:
    step: int
    position: dict  # the sampler's state before this step's clips were drawn
    future: Future


class StepRollouts:
    """The sampled groups of each step, from ``sampler``'s clips through ``cluster``'s workers.

    Per step: ``take(step)`` (the groups; sampled ahead or now), ``start(step + 1)`` (async: sampling of the next
    step begins), the update, ``wait()`` (sampling ahead done), the sync. ``position(step)``: the sampler state a
    checkpoint taken before ``step`` must store (so a resumed run draws step's clips again)."""

    def __init__(self, cfg: TrainConfig, cluster, sampler) -> None:
        self.cfg, self.cluster, self.sampler = cfg, cluster, sampler
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="funrl-sample-ahead") if cfg.run.async_steps else None
        self._ahead: _Ahead | None = None

    def take(self, step: int, t: StageTimer) -> Sampled:
        """Step ``step``'s groups: the ones sampled ahead (``t`` gets the seconds waited for them as "wait"; their
        stages' seconds, overlapped with the previous update, are in ``Sampled.seconds``), else sampled now (sync
        mode, the first step, or sampling ahead failed in an engine, which the sync since has restarted), from the
        same clips, with ``t`` timing the stages."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.step == step:
            try:
                with t("wait"):
                    return ahead.future.result()
            except WorkerError as exc:
                print(f"[funrl] sampling step {step} ahead failed ({exc.actor}); sampling it again now", flush=True)
                self.sampler.load_state_dict(ahead.position)
        return self._sample(step, restarts=True, t=t)

    def start(self, step: int) -> None:
        """Async: begin sampling step ``step`` (if the run has it) on the engines' current weights; returns at once."""
        if self._pool is None or step > self.cfg.run.steps:
            return
        position = self.sampler.state_dict()
        self._ahead = _Ahead(step, position, self._pool.submit(self._sample, step, False))

    def wait(self) -> None:
        """Until the sampling ahead has finished (before the weights change); its failure is kept for ``take``."""
        if self._ahead is not None:
            wait_futures([self._ahead.future])

    def position(self, step: int) -> dict:
        """The sampler state before step ``step``'s clips were drawn."""
        if self._ahead is not None and self._ahead.step == step:
            return self._ahead.position
        return self.sampler.state_dict()

    def close(self) -> None:
        """Drop the thread. A run that ends normally has nothing in flight (the last step starts nothing, a stop
        comes after ``wait``); after a failure, sampling still running ends when the actors are stopped."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _sample(self, step: int, restarts: bool, t: StageTimer | None = None) -> Sampled:
        """Sampled in this thread (with ``t``: its stages timed there) or ahead (their seconds in the result)."""
        own = t is None
        t = StageTimer() if t is None else t
        scored, batch, info = sample_groups(
            self.cfg,
            self.cluster,
            at_step(self.sampler.next_batch(), step),  # data.augment draws from (seed, step, clip)
            lambda: at_step(self.sampler.next_batch(), step),
            t,
            step,
            restarts=restarts,
        )
        return Sampled(scored, batch, info, dict(t.seconds) if own else {})


def sample_groups(
    cfg: TrainConfig,
    cluster,
    clips,
    more_clips: Callable[[], list] | None,
    t: StageTimer,
    step: int | None = None,
    restarts: bool = True,
) -> tuple[ScoredRollout, ScoredRollout | None, dict[str, float]]:
    """embed -> generate -> score (-> drop flat groups -> refill, up to ``run.max_refill_rounds`` more rounds).
    Returns every group sampled, the batch to train on (None: nothing left) and counts for the metrics.
    ``restarts=False``: an engine failure is raised, not repaired (sampling ahead leaves that to the step)."""
    rounds = cfg.run.max_refill_rounds if (cfg.run.dynamic_sampling and more_clips is not None) else 0
    sampled, kept, dropped = [], [], 0
    for round_ in range(rounds + 1):
        with t("embed"):
            prompts = cluster.embed(clips if round_ == 0 or more_clips is None else more_clips())
        with t("generate"):
            rollout = cluster.generate(prompts, seed=sampling_seed(cfg.rollout.seed, step, round_), restarts=restarts)
        with t("score"):
            sampled.append(score(cfg, rollout))
            batch, n = drop_flat_groups(sampled[-1]) if cfg.run.dynamic_sampling else (sampled[-1], 0)
        dropped += n
        kept += [] if batch is None else [batch]
        if sum(len(b.rollout.prompts.clips) for b in kept) >= cfg.run.clips_per_step:
            break
    batch = ScoredRollout.concat(kept) if kept else None
    if batch is not None and len(batch.rollout.prompts.clips) > cfg.run.clips_per_step:
        batch = select_groups(batch, list(range(cfg.run.clips_per_step)))
    if batch is not None and cfg.rollout.truncated == "mask":
        batch = mask_truncated(batch)
    trained = 0 if batch is None else len(batch.rollout.prompts.clips)
    return ScoredRollout.concat(sampled), batch, {"dropped": dropped, "refill_rounds": round_, "trained": trained}


def sampling_seed(base: int, step: int | None, round_: int) -> int | None:
    """The engines' seed for a step's sampling round (None without a step)."""
    if step is None:
        return None
    return int(np.random.SeedSequence([base, step, round_]).generate_state(1)[0] >> 1)


def score(cfg: TrainConfig, rollout) -> ScoredRollout:
    """The composite reward (+ the overlong penalty with ``rollout.truncated=penalty``) and the advantages."""
    extra = {}
    if cfg.rollout.truncated == "penalty":
        r = cfg.rollout
        extra["overlong"] = rollout_penalty(rollout, r.max_new_tokens, r.overlong_buffer, r.overlong_penalty)
    return score_and_advantage(
        rollout, cfg.rewards.weights, estimator=cfg.learner.advantage, extra=extra, normalizer=cfg.rewards.normalizer
    )
