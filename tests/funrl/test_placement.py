"""Placement of rollout engines and learner ranks in one Ray placement group (split and colocated)."""

import pytest

from funrl.config import ConfigError, load_config
from funrl.placement import create_placement, plan_bundles


def _cfg(*overrides: str):
    return load_config(None, ["data.train_manifest=x.jsonl", *overrides])


def test_split_plan_gives_each_engine_and_rank_its_own_bundle():
    plan = plan_bundles(
        _cfg("rollout.num_workers=2", "rollout.gpus_per_worker=1", "learner.num_ranks=3", "learner.gpus_per_rank=1")
    )
    assert plan.bundles == ({"CPU": 1.0, "GPU": 1.0},) * 5
    assert plan.rollout == (0, 1) and plan.learner == (2, 3, 4)


def test_colocated_plan_puts_engine_i_and_rank_i_in_bundle_i_of_one_gpu():
    plan = plan_bundles(
        _cfg(
            "ray.colocate=true",
            "rollout.num_workers=4",
            "rollout.gpus_per_worker=0.5",
            "learner.num_ranks=4",
            "learner.gpus_per_rank=0.5",
        )
    )
    assert plan.bundles == ({"CPU": 2.0, "GPU": 1.0},) * 4
    assert plan.rollout == plan.learner == (0, 1, 2, 3)


def test_cpu_plans_ask_for_no_gpu():
    assert plan_bundles(_cfg()).bundles == ({"CPU": 1.0}, {"CPU": 1.0})
    assert plan_bundles(_cfg("ray.colocate=true")).bundles == ({"CPU": 2.0},)


def test_role_resources_go_into_each_bundle_of_that_role_and_add_up_when_colocated():
    roles = (
        "ray.rollout_resources={rollout_node: 0.5, shared: 1}",
        "ray.learner_resources={learner_node: 2, shared: 1}",
    )
    plan = plan_bundles(_cfg("rollout.num_workers=2", *roles))
    assert plan.bundles == (
        {"CPU": 1.0, "rollout_node": 0.5, "shared": 1.0},
        {"CPU": 1.0, "rollout_node": 0.5, "shared": 1.0},
        {"CPU": 1.0, "learner_node": 2.0, "shared": 1.0},
    )
    colocated = plan_bundles(_cfg("ray.colocate=true", *roles))
    assert colocated.bundles == ({"CPU": 2.0, "rollout_node": 0.5, "learner_node": 2.0, "shared": 2.0},)


@pytest.mark.parametrize(
    "override, message",
    [
        ("ray.rollout_resources={GPU: 1}", "Ray's own resource"),
        ("ray.learner_resources={learner_node: 0}", "amount > 0"),
        ("ray.placement_strategy=pack", "must be one of PACK, SPREAD"),
    ],
)
def test_bad_placement_settings_are_config_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        _cfg(override)
    assert override.split("=")[0] in str(err.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["rollout.num_workers=2", "learner.num_ranks=4"],
            r"rollout.num_workers \(2\) must equal learner.num_ranks \(4\)",
        ),
        (["rollout.gpus_per_worker=1", "learner.gpus_per_rank=0.5"], r"must be <= 1, got 1.5"),
    ],
)
def test_impossible_colocation_is_a_config_error_naming_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        _cfg("ray.colocate=true", *overrides)
    assert err.value.key == "ray.colocate"


@pytest.mark.ray
def test_placement_group_reserves_the_plan_and_an_impossible_one_names_the_keys():
    import ray

    ray.init(num_cpus=4, num_gpus=0, include_dashboard=False)
    try:
        placement = create_placement(_cfg("ray.colocate=true", "rollout.num_workers=2", "learner.num_ranks=2"))
        table = ray.util.placement_group_table(placement.pg)
        assert table["state"] == "CREATED" and table["strategy"] == "PACK"
        assert list(table["bundles"].values()) == [{"CPU": 2.0}, {"CPU": 2.0}]
        placement.remove()
        with pytest.raises(RuntimeError, match="rollout.gpus_per_worker") as err:
            create_placement(_cfg("rollout.gpus_per_worker=1"), timeout_s=2)
        assert "GPU" in str(err.value)
    finally:
        ray.shutdown()
