"""``rewards.advantages``: the three estimators, flat groups, tied bests and Spearman, against hand values."""

import math

import pytest

from rewards.advantages import advantages, as_float32, average_ranks, best_set, is_flat, spearman


def test_grpo_divides_by_the_unbiased_std_plus_eps():
    # r = [1, .75, .75]: mean 5/6, deviations [1/6, -1/12, -1/12], unbiased std sqrt((1/36 + 2/144) / 2) = sqrt(1/48)
    std = math.sqrt(1 / 48)
    assert advantages([1.0, 0.75, 0.75], "grpo") == pytest.approx(
        [(1 / 6) / (std + 1e-6), (-1 / 12) / (std + 1e-6), (-1 / 12) / (std + 1e-6)], abs=1e-12
    )


def test_dr_grpo_is_reward_minus_mean():
    assert advantages([1.0, 0.75, 0.75], "dr_grpo") == pytest.approx([1 / 6, -1 / 12, -1 / 12])


def test_rloo_subtracts_the_mean_of_the_others():
    assert advantages([1.0, 0.75, 0.75], "rloo") == pytest.approx([0.25, -0.125, -0.125])
    assert advantages([1.0, 0.5], "rloo") == pytest.approx([0.5, -0.5])


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_flat_group_and_single_hypothesis_get_exactly_zero(estimator):
    assert advantages([0.1, 0.1, 0.1], estimator) == [0.0, 0.0, 0.0]  # 0.1 * 3 / 3 != 0.1 in floats
    assert advantages([0.7], estimator) == [0.0]
    assert is_flat([0.1, 0.1, 0.1]) and is_flat([0.7]) and not is_flat([0.1, 0.2])


def test_unknown_estimator_is_named():
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        advantages([1.0, 0.0], "ppo")


def test_best_set_holds_every_tied_best():
    assert best_set([1.0, 0.5, 1.0]) == {0, 2}
    assert best_set([0.2, 0.9]) == {1}


def test_float32_rounding_makes_float64_noise_a_tie_as_in_training():
    a, b = 1 / 3, 1 / 3 + 1e-12  # different in float64, one float32 value
    assert best_set([a, b]) == {1} and best_set(as_float32([a, b])) == {0, 1}
    assert is_flat(as_float32([a, b]))


def test_average_ranks_share_the_mean_rank_on_ties():
    assert average_ranks([5.0, 1.0, 5.0, 3.0]) == [3.5, 1.0, 3.5, 2.0]


def test_spearman_by_hand_with_ties():
    # ranks x [5, 2.5, 2.5, 4, 1], y [5, 1, 3, 2, 4]: sum dxdy = 2, sum dx^2 = 9.5, sum dy^2 = 10
    x = [1.1547, -0.5774, -0.5774, 0.7071, -0.7071]
    y = [0.8729, -1.0911, 0.2182, -0.7071, 0.7071]
    assert spearman(x, y) == pytest.approx(2 / math.sqrt(95))
    assert spearman(x, [2 * v + 1 for v in x]) == pytest.approx(1.0)  # monotone: 1
    assert spearman(x, [-v for v in x]) == pytest.approx(-1.0)


def test_spearman_is_undefined_for_a_constant_side_or_one_pair():
    assert spearman([0.0, 0.0, 0.0], [1.0, 2.0, 3.0]) is None
    assert spearman([1.0], [2.0]) is None
