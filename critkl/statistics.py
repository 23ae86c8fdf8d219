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


def mean_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% interval (t-based for few runs) of values over runs."""
    count = len(values)
    mean = float(np.mean(values))
    if count < 2:
        return mean, mean, mean
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}
    half = t.get(count, 1.96) * float(np.std(values, ddof=1)) / math.sqrt(count)
    return mean, mean - half, mean + half


def summarize(values) -> dict:
    """Mean, standard deviation and count of the finite values of a 1-D array."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "count": 0}
    return {"mean": float(values.mean()), "std": float(values.std()), "count": int(values.size)}
