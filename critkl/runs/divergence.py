"""Divergence: the finite checks the training loops make before they save, and the error they
raise (the last good checkpoint is kept)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _floating(leaves) -> list[jax.Array]:
    return [x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every floating-point value of `tree` is finite: [] bool."""
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in _floating(jax.tree.leaves(tree))]))


@jax.jit
def finite_per_run(tree) -> jax.Array:
    """[runs] bool: every floating-point value of each run is finite (`tree`'s leaves have
    a leading run axis)."""
    per_leaf = [jnp.isfinite(x).reshape(x.shape[0], -1).all(axis=1)
                for x in _floating(jax.tree.leaves(tree))]
    return jnp.stack(per_leaf).all(axis=0)
