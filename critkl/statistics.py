"""Intervals and summaries of measured values (plain numpy and Python floats, no JAX)."""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a success rate."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


BOOTSTRAP_RESAMPLES = 10_000


def mean_interval(values, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float, float]:
    """Mean over runs and its 95% percentile-bootstrap interval (resampling the runs, a fixed
    draw so that a table is reproducible): [runs] -> (mean, low, high).

    The interval lies within the values' range, so a rate's stays in [0, 1]. It is too narrow
    with few runs (with 2 it is their range): compare arms with `paired_test` instead.
    """
    values = np.asarray(values, np.float64)
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean, mean
    rows = np.random.default_rng(0).integers(0, len(values), (resamples, len(values)))
    low, high = np.percentile(values[rows].mean(axis=1), [2.5, 97.5])
    return mean, float(low), float(high)


def paired_test(differences) -> float:
    """Two-sided p-value of "the mean paired difference is 0": an exact sign-flip permutation
    test over runs (every 2^runs sign pattern; 100,000 random ones beyond 16 runs).

    differences [runs]: arm minus baseline, one per seed (the same problems). With 8 runs the
    smallest p-value is 2/256 = 0.0078.
    """
    differences = np.asarray(differences, np.float64)
    count = len(differences)
    if count == 0:
        return float("nan")
    if count <= 16:
        signs = 1 - 2 * ((np.arange(2 ** count)[:, None] >> np.arange(count)) & 1)
    else:
        signs = np.random.default_rng(0).choice([-1, 1], (100_000, count))
    observed = abs(differences.mean())
    means = np.abs((signs * differences).mean(axis=1))
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def student_t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t with df degrees of freedom (Simpson's rule on its density,
    2,000 intervals: accurate to ~1e-10 for |x| < 50)."""
    if x < 0:
        return 1.0 - student_t_cdf(-x, df)
    log_norm = (math.lgamma((df + 1) / 2) - math.lgamma(df / 2)
                - 0.5 * math.log(df * math.pi))
    grid = np.linspace(0.0, x, 2001)
    density = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid ** 2 / df))
    weights = np.ones(2001)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    return 0.5 + float(np.sum(weights * density)) * (x / 2000) / 3


def student_t_quantile(probability: float, df: int) -> float:
    """x with P(T <= x) = probability (bisection on `student_t_cdf`), 0.5 <= probability < 1."""
    low, high = 0.0, 1000.0
    for _ in range(80):
        middle = (low + high) / 2
        low, high = (middle, high) if student_t_cdf(middle, df) < probability else (low, middle)
    return (low + high) / 2


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean over runs and its Student-t interval: [runs] -> (mean, low, high). Wider than
    the percentile bootstrap with few runs, as it should be (NaN bounds with one run)."""
    values = np.asarray(values, np.float64)
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = (student_t_quantile(0.5 + level / 2, len(values) - 1)
            * float(np.std(values, ddof=1)) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def seeds_for_power(paired_sd: float, effect: float, alpha: float = 0.05,
                    power: float = 0.8) -> int:
    """The fewest seeds with which a two-sided paired t-test at level alpha detects a mean
    difference `effect` with probability `power`, given the SD of the paired differences
    (the central-t approximation: n >= ((t_{1-alpha/2} + t_power) sd / effect)^2, with the
    t quantiles at n - 1 degrees of freedom)."""
    if effect <= 0 or paired_sd <= 0:
        raise ValueError(f"effect ({effect}) and paired_sd ({paired_sd}) must be > 0")
    def needed(seeds: int) -> float:
        return ((student_t_quantile(1 - alpha / 2, seeds - 1)
                 + student_t_quantile(power, seeds - 1)) * paired_sd / effect) ** 2

    seeds = 2
    while seeds < needed(seeds):  # needed() falls as the seeds grow: the first fixed point
        seeds += 1
    return seeds


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment of p-values that share one family (several arms against
    one baseline): reject where the adjusted p-value is below the level. [k] -> [k]."""
    p_values = np.asarray(p_values, np.float64)
    order = np.argsort(p_values)
    adjusted = np.empty_like(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def summarize(values) -> dict:
    """Mean, standard deviation and count of the finite values of a 1-D array."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "count": 0}
    return {"mean": float(values.mean()), "std": float(values.std()), "count": int(values.size)}
