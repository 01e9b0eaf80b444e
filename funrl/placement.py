"""Where the rollout engines and the learner ranks run: one Ray placement group for both.

* **split** (``ray.colocate=false``): bundle ``i < W`` holds rollout worker ``i`` (``1 CPU`` +
  ``rollout.gpus_per_worker`` GPU), bundle ``W + r`` holds learner rank ``r`` (``1 CPU`` +
  ``learner.gpus_per_rank`` GPU).
* **colocated** (``ray.colocate=true``, ``W == R``): bundle ``i`` holds rollout worker ``i`` *and* learner
  rank ``i`` (``2 CPU`` + the sum of their GPU fractions, at most one GPU). A bundle lives on one node and a
  bundle of one GPU is one physical device, so engine ``i`` and rank ``i`` share exactly that GPU, and no two
  ranks can land on the same GPU (nccl refuses that).

Engine bundles also ask for ``ray.rollout_resources`` and rank bundles for ``ray.learner_resources`` (custom
resources that pin each role to the nodes started with them). The group uses ``ray.placement_strategy``,
``PACK`` by default: as few nodes as possible, which keeps FSDP traffic and weight sync on one node where it
fits. `plan_bundles` is pure (testable without Ray); `create_placement` asks Ray for
the group and fails with the resources it could not find.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray.util.placement_group import placement_group_table, remove_placement_group

from funrl.config import TrainConfig
from policy.ray_utils import reserve_placement_group

__all__ = ["BundlePlan", "Placement", "plan_bundles", "create_placement", "describe"]


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


def _bundle(cpus: float, gpus: float, *extra: dict[str, float]) -> dict[str, float]:
    bundle = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus > 0 else {})}
    for resources in extra:  # ray.rollout_resources / ray.learner_resources (summed where both name one)
        for name, amount in resources.items():
            bundle[name] = bundle.get(name, 0.0) + float(amount)
    return bundle


def plan_bundles(cfg: TrainConfig) -> BundlePlan:
    """The bundles of the run's placement group and which bundle each engine and rank goes to."""
    workers, ranks = cfg.rollout.num_workers, cfg.learner.num_ranks
    gw, gr = cfg.rollout.gpus_per_worker, cfg.learner.gpus_per_rank
    rw, rr = cfg.ray.rollout_resources, cfg.ray.learner_resources
    if cfg.ray.colocate:
        shared = tuple(_bundle(2, gw + gr, rw, rr) for _ in range(ranks))
        return BundlePlan(shared, tuple(range(workers)), tuple(range(ranks)))
    bundles = tuple(_bundle(1, gw, rw) for _ in range(workers)) + tuple(_bundle(1, gr, rr) for _ in range(ranks))
    return BundlePlan(bundles, tuple(range(workers)), tuple(range(workers, workers + ranks)))


def describe(placement: Placement) -> str:
    """Which node each engine and learner rank landed on, one line (node ids shortened; the run's log)."""
    nodes = placement_group_table(placement.pg).get("bundles_to_node_id", {})
    where = [f"rollout worker {i} -> node {str(nodes.get(b, '?'))[:8]}" for i, b in enumerate(placement.plan.rollout)]
    where += [f"learner rank {r} -> node {str(nodes.get(b, '?'))[:8]}" for r, b in enumerate(placement.plan.learner)]
    return "; ".join(where)


def create_placement(cfg: TrainConfig, timeout_s: float = 300.0) -> Placement:
    """Reserve the run's placement group (``ray.placement_strategy``); a clear error when the cluster cannot hold it."""
    plan = plan_bundles(cfg)
    mode = "colocated" if cfg.ray.colocate else "split"
    pg = reserve_placement_group(
        plan.bundles,
        cfg.ray.placement_strategy,
        timeout_s,
        f"{cfg.rollout.num_workers} rollout worker(s) and {cfg.learner.num_ranks} learner rank(s) "
        f"({mode}, {cfg.ray.placement_strategy}: bundles {list(plan.bundles)}; rollout.num_workers, "
        "rollout.gpus_per_worker, learner.num_ranks, learner.gpus_per_rank, ray.colocate, "
        "ray.placement_strategy, ray.rollout_resources, ray.learner_resources)",
    )
    return Placement(pg, plan)
