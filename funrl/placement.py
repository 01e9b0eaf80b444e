"""Where the rollout engines and the learner ranks run: one Ray placement group for both.

* **split** (``ray.colocate=false``): bundle ``i < W`` holds rollout worker ``i`` (``1 CPU`` +
  ``rollout.gpus_per_worker`` GPU), bundle ``W + r`` holds learner rank ``r`` (``1 CPU`` +
  ``learner.gpus_per_rank`` GPU).
* **colocated** (``ray.colocate=true``, ``W == R``): bundle ``i`` holds rollout worker ``i`` *and* learner
  rank ``i`` (``2 CPU`` + the sum of their GPU fractions, at most one GPU). A bundle lives on one node and a
  bundle of one GPU is one physical device, so engine ``i`` and rank ``i`` share exactly that GPU, and no two
  ranks can land on the same GPU (nccl refuses that).

The group uses the ``PACK`` strategy: as few nodes as possible, which keeps FSDP traffic and weight sync
on one node where it fits. `plan_bundles` is pure (testable without Ray); `create_placement` asks Ray for
the group and fails with the resources it could not find.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray.util.placement_group import remove_placement_group

from funrl.config import TrainConfig
from policy.ray_utils import reserve_placement_group

__all__ = ["BundlePlan", "Placement", "plan_bundles", "create_placement"]


@dataclass(frozen=True)
class BundlePlan:
    bundles: tuple[dict[str, float], ...]  # one resource dict per bundle
    rollout: tuple[int, ...]  # bundle index of rollout worker i
    learner: tuple[int, ...]  # bundle index of learner rank r


@dataclass(frozen=True)
class Placement:
    pg: Any  # ray.util.placement_group.PlacementGroup
    plan: BundlePlan

    def remove(self) -> None:
        remove_placement_group(self.pg)


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus > 0 else {})}


def plan_bundles(cfg: TrainConfig) -> BundlePlan:
    """The bundles of the run's placement group and which bundle each engine and rank goes to."""
    workers, ranks = cfg.rollout.num_workers, cfg.learner.num_ranks
    gw, gr = cfg.rollout.gpus_per_worker, cfg.learner.gpus_per_rank
    if cfg.ray.colocate:
        shared = tuple(_bundle(2, gw + gr) for _ in range(ranks))
        return BundlePlan(shared, tuple(range(workers)), tuple(range(ranks)))
    bundles = tuple(_bundle(1, gw) for _ in range(workers)) + tuple(_bundle(1, gr) for _ in range(ranks))
    return BundlePlan(bundles, tuple(range(workers)), tuple(range(workers, workers + ranks)))


def create_placement(cfg: TrainConfig, timeout_s: float = 300.0) -> Placement:
    """Reserve the run's placement group (``PACK``); a clear error when the cluster cannot hold it."""
    plan = plan_bundles(cfg)
    mode = "colocated" if cfg.ray.colocate else "split"
    pg = reserve_placement_group(
        plan.bundles,
        "PACK",
        timeout_s,
        f"{cfg.rollout.num_workers} rollout worker(s) and {cfg.learner.num_ranks} learner rank(s) "
        f"({mode}: bundles {list(plan.bundles)}; rollout.num_workers, rollout.gpus_per_worker, "
        f"learner.num_ranks, learner.gpus_per_rank, ray.colocate)",
    )
    return Placement(pg, plan)
