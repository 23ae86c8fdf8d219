"""Data parallelism over every device with jit, a device mesh and NamedSharding.

The batch axis is split over the mesh axis "data"; parameters and optimizer state
are replicated. XLA's SPMD partitioner inserts the gradient all-reduce.
"""

from __future__ import annotations

import jax
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


def check_divisible(name: str, value: int, mesh: Mesh) -> None:
    devices = mesh.devices.size
    if value % devices:
        raise ValueError(
            f"{name}={value} must be a multiple of the number of devices ({devices}) "
            "so that the batch splits evenly"
        )
