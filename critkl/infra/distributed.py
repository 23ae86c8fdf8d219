"""Joining the processes of a multi-process run into one JAX program.

Every process (one per host of a TPU pod slice, or several on one machine) runs
the same command; `initialize` joins them before JAX computes anything:

- with ``--coordinator HOST:PORT --num-processes N --process-id I`` (given to every
  process; `critkl launch` passes them to the processes it starts), explicitly;
- on a Cloud TPU VM, with `jax.distributed.initialize()` and no arguments: the TPU
  metadata tells each host its process id and the coordinator (a single-host VM
  becomes a run of one process);
- elsewhere not at all: a single process.

After joining, `jax.devices()` lists every process's devices, so the data mesh
(critkl.infra.parallel) spans them all. A process that stops answering the coordinator
for ``--heartbeat-timeout`` seconds is declared dead, and every other process then
stops with an error instead of waiting for it.
"""

from __future__ import annotations

import os
import sys

import jax

HEARTBEAT_TIMEOUT = 60  # seconds


class DistributedError(Exception):
    """The distributed flags are inconsistent, or the processes could not join."""


def _check(args) -> None:
    given = {"--coordinator": args.coordinator, "--num-processes": args.num_processes,
             "--process-id": args.process_id}
    missing = [flag for flag, value in given.items() if value is None]
    if missing:
        raise DistributedError(
            f"a multi-process run needs --coordinator, --num-processes and --process-id "
            f"together; {', '.join(missing)} missing. Give all three to every process, e.g. "
            "--coordinator 10.0.0.2:1234 --num-processes 2 --process-id 0 on the first host "
            "and --process-id 1 on the second, or start local processes with `critkl launch`.")
    host, _, port = args.coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(
            f"--coordinator {args.coordinator!r} must be HOST:PORT, the address of process 0 "
            "and a free port on it, e.g. 10.0.0.2:1234")
    if args.num_processes < 1:
        raise DistributedError(f"--num-processes {args.num_processes} must be at least 1")
    if not 0 <= args.process_id < args.num_processes:
        raise DistributedError(
            f"--process-id {args.process_id} must be in 0..{args.num_processes - 1} for "
            f"--num-processes {args.num_processes}: each process gets its own id, 0 on the "
            "coordinator's host")
    if args.heartbeat_timeout < 1:
        raise DistributedError(f"--heartbeat-timeout {args.heartbeat_timeout} must be >= 1 second")


def _on_cloud_tpu_vm() -> bool:
    """Whether `import jax` found TPU chips and libtpu: JAX's own test, a private flag
    (False should a later JAX drop it; the explicit flags still work then)."""
    try:
        from jax._src import cloud_tpu_init
    except ImportError:
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def initialize(args) -> None:
    """Join the other processes of this run (see the module docstring); call it before
    JAX computes anything. args: the training command's flags (`coordinator`,
    `num_processes`, `process_id`, `heartbeat_timeout`). Then only process 0 prints on stdout (errors still go to
    stderr)."""
    explicit = any(v is not None for v in (args.coordinator, args.num_processes, args.process_id))
    if explicit:
        _check(args)
        # Cross-process collectives on CPU devices (JAX's default since 0.5; set for older ones).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        where = dict(coordinator_address=args.coordinator, num_processes=args.num_processes,
                     process_id=args.process_id)
    elif _on_cloud_tpu_vm():
        where = {}
    else:
        return
    try:
        jax.distributed.initialize(**where, heartbeat_timeout_seconds=args.heartbeat_timeout)
    except Exception as error:  # jax raises RuntimeError, ValueError or its runtime errors
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise DistributedError(
            f"could not join the other processes ({detail}). Check that every process got the "
            "same --coordinator and --num-processes and its own --process-id, that process 0 "
            "is running and its port is reachable from every host.") from None
    _separate_stdout(keep=jax.process_index() == 0)


def _separate_stdout(keep: bool) -> None:
    """Python's prints keep stdout (`keep`, process 0) or are dropped (the others, whose
    progress lines would repeat process 0's); whatever C++ writes on stdout (gloo
    announces each connection there, from several threads) goes to stderr."""
    sys.stdout.flush()
    prints = os.dup(sys.stdout.fileno()) if keep else os.open(os.devnull, os.O_WRONLY)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = os.fdopen(prints, "w", buffering=1)
