"""Returning freed host memory to the operating system.

glibc keeps the memory that a process frees (XLA's compilations, a period's host copies) for
its next allocations and does not give it back: the resident size of a long run grows with
what it once needed. `release_freed` asks glibc to give back what is free now. Elsewhere (no
glibc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_freed() -> None:
    """Give the memory that this process has freed back to the operating system."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
