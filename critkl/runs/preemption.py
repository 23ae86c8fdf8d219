"""Preemption: SIGTERM (a TPU VM or spot GPU about to go) or SIGINT (Ctrl-C) asks a training
loop to save at its next step boundary and stop; a second signal stops at once."""

from __future__ import annotations

import signal
import threading

# Exit status of a command stopped by a signal after saving its checkpoint (EX_TEMPFAIL:
# the work is not lost, run it again with --resume).
PREEMPTED_EXIT = 75


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

    def __enter__(self) -> "PreemptionRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle)
                              for number in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
