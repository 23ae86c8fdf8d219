"""Preemption: SIGTERM (a TPU VM or spot GPU about to go) or SIGINT (Ctrl-C) asks a training
loop to save at its next step boundary and stop; a second signal stops at once. In a
multi-process run the processes agree at every step boundary, so that a signal to any of them
(or to each at a different moment) stops all of them after the same step, whose checkpoint
they write together.

The loops keep the handlers until their checkpointer is closed (its last write finished): a
first signal while a checkpoint is written (on a pod, a host's own SIGTERM after the hosts
agreed to stop) is a request like any other. A second signal to the same process stops it at
once, also during that write: the checkpoint it cuts is left incomplete, never used, and
--resume continues from the last complete one as if never interrupted."""

from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np

# Exit status of a command stopped by a signal after saving its checkpoint (EX_TEMPFAIL, 75:
# the work is not lost, run it again with --resume).
PREEMPTED_EXIT = os.EX_TEMPFAIL


class Preempted(Exception):
    """A training loop saved its state at `step` (a pre-training step, an RL iteration: `unit`)
    and stopped on a signal."""

    def __init__(self, signal_name: str, step: int, unit: str = "step"):
        super().__init__(f"stopped by {signal_name} after saving {unit} {step}")
        self.signal_name, self.step = signal_name, step


class PreemptionRequests:
    """Within `with`: SIGTERM and SIGINT set `requested` (the signal's name) instead of ending
    the process; a second one ends it as the signal would have. Outside the main thread (where
    Python cannot take signals) it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def _handle(self, number, frame):
        if self.requested is not None:  # the second signal: as if no handler were set
            signal.signal(number, signal.SIG_DFL if number == signal.SIGTERM
                          else signal.default_int_handler)
            signal.raise_signal(number)
            return
        self.requested = signal.Signals(number).name

    def agreed(self) -> str | None:
        """Whether to stop after this step, the same answer in every process: the signal's
        name when this or any other process received one, else None. A collective call in a
        multi-process run: every process calls it at every step boundary."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        anyone = np.any(multihost_utils.process_allgather(np.int32(self.requested is not None)))
        return (self.requested or "a signal to another process") if anyone else None

    def __enter__(self) -> "PreemptionRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle)
                              for number in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
