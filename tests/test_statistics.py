"""critkl.statistics against direct computations."""

import itertools

import numpy as np
import pytest

from critkl import statistics


def test_bootstrap_interval_of_rates_stays_in_the_unit_interval():
    """Rates near 1 whose t-interval leaves [0, 1] (upper bound 1.026 here)."""
    rates = np.array([1.0, 1.0, 0.95, 1.0, 0.9])
    half = 2.78 * rates.std(ddof=1) / np.sqrt(len(rates))
    assert rates.mean() + half > 1.0
    mean, low, high = statistics.mean_interval(rates)
    assert mean == pytest.approx(rates.mean())
    assert 0.9 <= low < mean < high <= 1.0


def test_bootstrap_interval_matches_the_normal_one_for_many_runs():
    values = np.random.default_rng(1).normal(0.3, 0.1, 400)
    mean, low, high = statistics.mean_interval(values)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert low == pytest.approx(mean - half, abs=0.15 * half)
    assert high == pytest.approx(mean + half, abs=0.15 * half)


def test_paired_test_against_enumerated_sign_flips():
    differences = np.array([0.12, 0.05, -0.02, 0.08, 0.10, 0.03])
    flips = [abs(np.mean(np.array(signs) * differences))
             for signs in itertools.product([-1, 1], repeat=len(differences))]
    expected = np.mean(np.array(flips) >= abs(differences.mean()) - 1e-12)
    assert statistics.paired_test(differences) == pytest.approx(expected)
    assert statistics.paired_test(np.full(8, 0.1)) == pytest.approx(2 / 256)
    assert statistics.paired_test(np.zeros(4)) == 1.0


def test_holm_against_its_definition():
    p = [0.01, 0.04, 0.03, 0.20]
    # sorted 0.01, 0.03, 0.04, 0.20 times 4, 3, 2, 1 = 0.04, 0.09, 0.08 -> 0.09, 0.20
    assert statistics.holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert statistics.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("df, probability, expected", [
    (1, 0.975, 12.7062), (2, 0.975, 4.3027), (5, 0.975, 2.5706), (7, 0.975, 2.3646),
    (30, 0.975, 2.0423), (8, 0.8, 0.8889), (120, 0.995, 2.6174)])
def test_t_quantiles_match_the_printed_table(df, probability, expected):
    assert statistics.student_t_quantile(probability, df) == pytest.approx(expected, abs=2e-4)


def test_t_interval_is_the_textbook_one_and_wider_than_the_bootstrap():
    values = np.array([0.12, 0.05, 0.20, -0.02, 0.09, 0.15])
    mean, low, high = statistics.t_interval(values)
    half = 2.5706 * values.std(ddof=1) / np.sqrt(len(values))
    assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half), abs=1e-4)
    _, boot_low, boot_high = statistics.mean_interval(values)
    assert low < boot_low and high > boot_high


def test_seeds_for_power_solves_the_t_approximation():
    """With n seeds the t-based detection formula holds, with n - 1 it does not."""
    for sd, effect in [(0.043, 0.02), (1.0, 1.0), (0.05, 0.05)]:
        n = statistics.seeds_for_power(sd, effect)

        def enough(k):
            return k >= ((statistics.student_t_quantile(0.975, k - 1)
                          + statistics.student_t_quantile(0.8, k - 1)) * sd / effect) ** 2
        assert enough(n) and not enough(n - 1)
    assert statistics.seeds_for_power(0.043, 0.02) == 39  # the frontier's paired SD, 2 points
    with pytest.raises(ValueError):
        statistics.seeds_for_power(0.0, 0.02)
