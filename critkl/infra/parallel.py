"""Data parallelism over every device with jit, a device mesh and NamedSharding.

The batch axis is split over the mesh axis "data"; parameters and optimizer state
are replicated. XLA's SPMD partitioner inserts the gradient all-reduce. In a
multi-process run (critkl.infra.distributed) the mesh spans every process's devices:
`put` and `fetch` move values onto and off such a mesh.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: all devices of all processes). Auto axes:
    XLA propagates the batch sharding given at a few points (with_sharding_constraint)."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the devices."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def over_runs(fn, mesh: Mesh | None, in_axes: tuple):
    """`jax.vmap(fn, in_axes)` over runs, the runs split over the mesh's devices: each device
    maps over its own runs (`jax.shard_map`), so that no run's data crosses devices and the
    parts of a run that take turns under vmap (`vmap_rules.one_at_a_time`) take them per device.

    in_axes: 0 (a leading run axis, split) or None (the same for every run, replicated) per
    argument; every output has the run axis. The number of runs must split evenly over the
    devices (a sweep pads its runs to a multiple: `runs.finetuning.finetune`); with one
    device, or mesh None, this is jax.vmap itself.
    """
    vmapped = jax.vmap(fn, in_axes=in_axes)
    if mesh is None or mesh.devices.size == 1:
        return vmapped
    in_specs = tuple(PartitionSpec() if axis is None else PartitionSpec(DATA_AXIS)
                     for axis in in_axes)
    # check_vma off: the runs share nothing, and a run's loops start from constants.
    return jax.shard_map(vmapped, mesh=mesh, in_specs=in_specs,
                         out_specs=PartitionSpec(DATA_AXIS), check_vma=False)


class BatchSplitError(ValueError):
    """A batch that the devices of the mesh cannot share evenly (a usage error)."""


def check_divisible(name: str, value: int, mesh: Mesh) -> None:
    devices = mesh.devices.size
    if value % devices:
        raise BatchSplitError(
            f"{name}={value} must be a multiple of the number of devices ({devices}) "
            "so that the batch splits evenly"
        )


def cpu_devices_flags(count: int) -> str:
    """XLA_FLAGS for `count` single-threaded CPU devices (XLA runs many CPU operations
    on one thread; one device per core with the batch split over them is faster)."""
    return (f"--xla_force_host_platform_device_count={count} "
            "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")


def put(tree, sharding: NamedSharding):
    """`tree` (host values or arrays, the same on every process) placed on `sharding`,
    whose devices may belong to several processes. Each process keeps its devices'
    shards. PRNG key arrays are placed through their key data, and arrays held by this
    process alone go through the host: jax.device_put takes neither onto other
    processes' devices."""
    def leaf(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(leaf(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            x = np.asarray(x)
        return jax.device_put(x, sharding)

    return jax.tree.map(leaf, tree)


def fetch(tree):
    """Numpy copies of `tree`'s arrays, gathering the shards other processes hold.
    Gathering is a collective: every process calls it at the same point."""
    def leaf(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(x)

    return jax.tree.map(leaf, tree)


def use_cpu_cores(parallel_items: int) -> None:
    """On a CPU, XLA runs many operations on one thread: one single-threaded host
    device per core, with the batch (or a sweep's runs) split over them, trains
    10-25% faster on 2 cores (BUILD.md). `parallel_items` must split evenly over the
    devices; with one device XLA keeps its own threading. Must run before JAX
    starts; a user's own XLA_FLAGS win. Harmless on GPU/TPU machines, where these
    host devices are not used."""
    if "XLA_FLAGS" in os.environ:
        return
    cores = os.cpu_count() or 1
    devices = max(d for d in range(1, cores + 1) if parallel_items % d == 0)
    if devices == 1:
        return
    os.environ["XLA_FLAGS"] = cpu_devices_flags(devices)
