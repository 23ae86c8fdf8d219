"""The one seam where a program's execution plan is chosen: how the core's programs lay their
work on the devices they are built for.

XLA:CPU and the accelerators want different shapes of the same computation. On a CPU, one
sequence's matrix products already fill a core, memory bandwidth is the limit and a
program's temporaries should stay in the processor's caches; so the sampler decodes a few
sequences at a time, rendering and scoring go in chunks of rows, and the runs of a vmapped
sweep take turns in sampling and in the update's chunks (each at its own width, one run's
buffers in memory at a time). On a GPU or TPU the whole batch goes at once and a sweep's
runs are batched. The plan changes speed and memory only: every result is the same under
either (tested).

A program builder (`rl.make_train`, `supervised.make_step`, `evaluation.attempt`, ...)
takes a `Strategy`; `for_devices(devices)` picks the one for the devices a program is built
for, so that a CPU program and an accelerator program are each one explicit choice (the
lowering tests build accelerator programs on a CPU). Left out, the default devices decide.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How a program uses its devices (hashable: a static argument of jitted functions)."""

    name: str
    # The sampler decodes as many sequences at a time as keep the weights and their
    # key/value cache within this many bytes; None: the whole batch at once.
    decode_group_bytes: int | None
    # Rendering and scoring go in chunks of rows of about this many [B, L] elements, one
    # chunk after another; None: the whole batch in one pass.
    row_chunk_elements: int | None
    # Under jax.vmap (a sweep), the runs take turns in sampling and in the update's chunks
    # (`vmap_rules.one_at_a_time`); False: they are batched.
    runs_in_turn: bool

    def decode_rows(self, weight_bytes: int, cache_bytes: int) -> int | None:
        """Sequences decoded at a time: as many as keep the weights and their key/value caches
        (`cache_bytes` per sequence) within `decode_group_bytes`; None (the whole batch at
        once) without a budget, or when not even one sequence fits (the weights are then read
        from memory at every token anyway)."""
        if self.decode_group_bytes is None:
            return None
        rows = (self.decode_group_bytes - weight_bytes) // cache_bytes
        return rows if rows >= 1 else None


# The mini model at 4 digits (3.4 MB of weights, 1.7 MB of cache per sequence) decodes 5
# sequences at a time within 12 MiB, the fastest of 2-10 measured (docs/throughput.md); row
# chunks of 2^20 elements keep rendering's intermediates in the caches.
CPU = Strategy("cpu", decode_group_bytes=12 * 2**20, row_chunk_elements=1 << 20,
               runs_in_turn=True)
ACCELERATOR = Strategy("accelerator", decode_group_bytes=None, row_chunk_elements=None,
                       runs_in_turn=False)


def for_devices(devices: Sequence[jax.Device] | None = None) -> Strategy:
    """The strategy for a program built for `devices` (default: jax.devices()): CPU when they
    are all host CPU devices, ACCELERATOR otherwise."""
    devices = jax.devices() if devices is None else list(devices)
    return CPU if all(device.platform == "cpu" for device in devices) else ACCELERATOR


def resolve(strategy: Strategy | None) -> Strategy:
    """`strategy`, or the default devices' when None."""
    return for_devices() if strategy is None else strategy
