"""JAX's start, done once by each training command before it computes."""

from __future__ import annotations

from critkl.commands.flags import UsageError


def start_jax(args, parallel_items: int) -> None:
    """One CPU device per core (`use_cpu_cores`, for this process's share of
    `parallel_items`), then join the other processes of a multi-process run
    (critkl.infra.distributed); `args` carries the multi-process flags."""
    from critkl.infra import distributed, parallel

    processes = max(args.num_processes or 1, 1)
    parallel.use_cpu_cores(parallel_items // processes if parallel_items % processes == 0 else 1)
    try:
        distributed.initialize(args)
    except distributed.DistributedError as error:
        raise UsageError(str(error)) from None
