"""Timing shared by the benchmark scripts (run them from the repository root)."""

import time


def best_seconds(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls of fn(), after one warm-up call (compilation)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
