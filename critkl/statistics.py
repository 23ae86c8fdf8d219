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
