"""critkl.runs.preemption: the first SIGTERM or SIGINT is a request to save and stop; a second
one stops at once, as the signal would have without critkl; the handlers are put back."""

import signal
import subprocess
import sys

import pytest

from critkl.runs import preemption


def test_a_second_sigint_interrupts_at_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with preemption.PreemptionRequests() as requests:
        assert requests.requested is None
        signal.raise_signal(signal.SIGINT)
        assert requests.requested == "SIGINT"  # the first: a request, the process goes on
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_second_sigterm_ends_the_process():
    program = (
        "import signal\n"
        "from critkl.runs.preemption import PreemptionRequests\n"
        "with PreemptionRequests() as requests:\n"
        "    signal.raise_signal(signal.SIGTERM)\n"
        "    print('requested', requests.requested, flush=True)\n"
        "    signal.raise_signal(signal.SIGTERM)\n"
        "    print('still running', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout == "requested SIGTERM\n"
    assert done.returncode == -signal.SIGTERM
