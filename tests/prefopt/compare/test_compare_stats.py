"""The interval over seeds: mean ± t(0.975, n-1) · s / √n, checked against hand arithmetic."""

import math

import pytest

from prefopt.compare.stats import mean_ci, t975


def test_three_values():
    # mean 2, s² = (1 + 0 + 1) / 2 = 1, t(0.975, 2) = 4.303 -> 4.303 / √3
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.303 / math.sqrt(3), rel=1e-12)


def test_two_seeds_use_t_with_one_degree_of_freedom():
    # s = |0.7 - 0.5| / √2, half = 12.706 · s / √2 = 12.706 · 0.1
    mean, half = mean_ci([0.5, 0.7])
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(1.2706, rel=1e-9)


def test_one_seed_has_no_interval_and_equal_values_a_zero_one():
    assert mean_ci([0.25]) == (0.25, None)
    mean, half = mean_ci([0.4, 0.4, 0.4])
    assert mean == pytest.approx(0.4) and half == pytest.approx(0.0, abs=1e-12)


def test_quantiles_from_the_table_and_the_normal_beyond_30():
    assert (t975(1), t975(4), t975(30), t975(31), t975(1000)) == (12.706, 2.776, 2.042,
                                                                  1.96, 1.96)
    with pytest.raises(ValueError, match="df >= 1"):
        t975(0)
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])
