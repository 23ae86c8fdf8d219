"""`critkl launch`: run one command as several JAX processes on this machine.

For testing multi-process runs on a CPU machine, and for multi-GPU machines run
with one process per GPU (or group of GPUs). Each process gets the distributed
flags of critkl.infra.distributed, with the coordinator on a free local port, its own
forced CPU devices (XLA_FLAGS) and, with `gpus_per_process`, its own GPUs
(JAX_LOCAL_DEVICE_IDS). The launcher watches its processes: when one fails, it
stops the others and names the one that failed, so that no process is left
waiting for a dead one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from critkl.infra import parallel

# Seconds between asking the processes to stop (SIGTERM) and killing them. Short: a JAX
# process of a distributed run takes SIGTERM as a preemption notice and goes on, and
# once a peer is dead the others cannot finish their collectives anyway.
STOP_GRACE = 2
POLL = 0.2  # seconds between looks at the processes


def free_port() -> int:
    """A TCP port free on this machine now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_environment(index: int, cpu_devices: int, gpus_per_process: int) -> dict[str, str]:
    """The environment of process `index`: the caller's, with XLA_FLAGS forcing
    `cpu_devices` single-threaded CPU devices (replacing any forced count there) and,
    when gpus_per_process > 0, this process's share of the GPUs."""
    env = dict(os.environ)
    kept = [flag for flag in env.get("XLA_FLAGS", "").split()
            if not flag.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(kept + [parallel.cpu_devices_flags(cpu_devices)])
    if gpus_per_process:
        first = index * gpus_per_process
        env["JAX_LOCAL_DEVICE_IDS"] = ",".join(str(first + g) for g in range(gpus_per_process))
    return env


def _describe(status: int) -> str:
    if status < 0:
        return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


def _stop(children: list[subprocess.Popen]) -> None:
    """SIGTERM to the processes still running, SIGKILL to those still there after STOP_GRACE."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_GRACE
    for child in children:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def launch(command: list[str], processes: int, cpu_devices: int, gpus_per_process: int = 0,
           say=lambda line: print(f"critkl launch: {line}", file=sys.stderr, flush=True)) -> int:
    """Run `command` (a critkl training command) as `processes` processes joined into one
    JAX program; wait for them. Returns 0 when all succeed, else the failed process's
    exit status (1 when it was killed by a signal)."""
    coordinator = f"127.0.0.1:{free_port()}"
    children = []
    for index in range(processes):
        flags = ["--coordinator", coordinator, "--num-processes", str(processes),
                 "--process-id", str(index)]
        env = process_environment(index, cpu_devices, gpus_per_process)
        children.append(subprocess.Popen(command + flags, env=env))
    say(f"{processes} processes x {cpu_devices} CPU devices, coordinator {coordinator}; "
        + ", ".join(f"process {i} pid {child.pid}" for i, child in enumerate(children)))
    received = []
    handlers = {s: signal.signal(s, lambda signum, frame: received.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not received:
            statuses = [child.poll() for child in children]
            failed = [i for i, status in enumerate(statuses) if status not in (None, 0)]
            if failed and statuses[failed[0]] == os.EX_TEMPFAIL:
                # Preempted (critkl.runs.preemption's exit status): every process stops after
                # the same step (they agree on it) and writes its part of that checkpoint; let
                # the others finish theirs.
                for child in children:
                    try:
                        child.wait(timeout=STOP_GRACE)
                    except subprocess.TimeoutExpired:
                        pass
                statuses = [child.poll() for child in children]
                failed = [i for i, status in enumerate(statuses) if status not in (None, 0)]
            if failed:
                index, status = failed[0], statuses[failed[0]]
                say(f"process {index} (pid {children[index].pid}) {_describe(status)}; stopping "
                    "the other processes. A training run resumes from its last checkpoint "
                    "with --resume.")
                _stop(children)
                return status if status > 0 else 1
            if all(status == 0 for status in statuses):
                return 0
            time.sleep(POLL)
        say(f"received {signal.Signals(received[0]).name}; stopping the processes")
        _stop(children)
        return 128 + received[0]
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
