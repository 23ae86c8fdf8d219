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


def test_processes_agree_on_a_signal_to_any_of_them(monkeypatch):
    """`agreed` in a 2-process run with a fake all-gather: each process's answer is the same
    whichever of them was signalled, and None when none was."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    others = []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather",
                        lambda mine: np.array([int(mine), *others]))
    requests = preemption.PreemptionRequests()
    assert requests.agreed() is None
    others.append(1)
    assert requests.agreed() == "a signal to another process"
    requests.requested = "SIGTERM"
    assert requests.agreed() == "SIGTERM"
    others[0] = 0
    assert requests.agreed() == "SIGTERM"


# A tiny pre-training (tests.test_pretrain.TINY, 6 steps, checkpoints every 2) in a process of
# its own that sends itself SIGTERM when its checkpointer is closed (the last checkpoint's
# write in flight), and also at the "step N/" line when N is given.
SIGNALLED_RUN = """
import os, signal, sys
from critkl.infra import checkpoint
from critkl.runs import pretraining
from critkl.runs.preemption import Preempted
from tests.test_pretrain import TINY

run_dir, first_at = sys.argv[1], sys.argv[2]
close = checkpoint.Checkpointer.close

def close_signalled(self):
    os.kill(os.getpid(), signal.SIGTERM)
    close(self)

def print_fn(line):
    print(line, flush=True)
    if first_at and line.startswith(f"step {first_at}/"):
        os.kill(os.getpid(), signal.SIGTERM)

checkpoint.Checkpointer.close = close_signalled
try:
    pretraining.pretrain(TINY, run_dir, print_fn=print_fn)
except Preempted as stop:
    print(stop, flush=True)
    sys.exit(75)
"""


def signalled_run(run_dir, first_at=""):
    return subprocess.run([sys.executable, "-c", SIGNALLED_RUN, str(run_dir), first_at],
                          capture_output=True, text=True, timeout=300)


def test_a_signal_while_the_last_checkpoint_is_written_lets_it_finish(tmp_path):
    """The first SIGTERM arrives while the final checkpoint is written: the write finishes and
    the run ends normally (before: the handlers were put back when the loop ended, before the
    write was waited for, and the signal killed the process mid-write)."""
    from critkl.infra import checkpoint
    from tests.test_pretrain import TINY

    done = signalled_run(tmp_path / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained steps 0..6" in done.stdout
    assert checkpoint.latest_checkpoint_step(tmp_path / "run") == TINY.steps


@pytest.mark.slow  # ~45 s on a shared core; the signal during the write stays in the default
# suite by test_a_signal_while_the_last_checkpoint_is_written_lets_it_finish
def test_a_second_signal_during_the_save_stops_at_once_and_resume_is_exact(tmp_path):
    """SIGTERM at step 3 asks for a stop after step 4; a second SIGTERM while step 4's
    checkpoint is written ends the process at once (killed by the signal, no 'stopped by'
    line); --resume continues from the last complete checkpoint and ends bit-identical to a
    run never interrupted."""
    import chex
    import jax

    from critkl.infra import checkpoint
    from critkl.runs import pretraining
    from tests.test_pretrain import TINY

    cut = tmp_path / "cut"
    done = signalled_run(cut, first_at="3")
    assert done.returncode == -signal.SIGTERM, done.stderr[-3000:]
    assert "stopped by" not in done.stdout + done.stderr
    assert checkpoint.latest_checkpoint_step(cut) in (2, 4)
    resumed = pretraining.pretrain(TINY, cut, resume=True, print_fn=lambda line: None)
    straight = pretraining.pretrain(TINY, tmp_path / "straight", print_fn=lambda line: None)
    chex.assert_trees_all_equal(jax.device_get(straight), jax.device_get(resumed))
