"""Rendering and scoring in chunks of rows where the device strategy asks for it
(`strategy.Strategy.row_chunk_elements`: on a CPU, so that a chunk's intermediates stay in
the caches). The tasks render and score whole batches; their callers, which know the
strategy, go through `render` and `score` here."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from critkl import strategy as strategies
from critkl.tasks.base import Episodes, Outcome, TextTask


def render(task: TextTask, problems, strategy: strategies.Strategy | None = None) -> Episodes:
    """`task.render(problems)`, in chunks of rows as `strategy` (default: the default
    devices') says."""
    return in_chunks(task.render, problems, task.max_episode_length(),
                     strategies.resolve(strategy).row_chunk_elements)


def score(task: TextTask, tokens: jax.Array, reference: Episodes,
          strategy: strategies.Strategy | None = None) -> Outcome:
    """`task.score(tokens, reference)`, in chunks of rows as `strategy` (default: the default
    devices') says."""
    needed = reference._replace(role=None, list_index=None)  # no task's score reads these
    return in_chunks(lambda rows: task.score(*rows), (tokens, needed), tokens.shape[1],
                     strategies.resolve(strategy).row_chunk_elements)


def in_chunks(fn, arrays, width: int, chunk_elements: int | None):
    """fn applied to chunks of rows, one after another (lax.map), results put back in order.

    arrays: a pytree of [B, ...] arrays; fn maps such a tree of [C, ...] to one of [C, ...];
    width: elements per row of fn's largest intermediates; a chunk holds about
    `chunk_elements` of them (on a CPU its intermediates then stay in the caches, and XLA:CPU
    does not page in fresh memory for each whole-batch temporary). Row r goes to chunk r % n,
    so a batch sharded over devices by contiguous rows stays sharded the same way in every
    chunk. A batch that does not split evenly, or chunk_elements None, is done in one pass.
    """
    batch = jax.tree.leaves(arrays)[0].shape[0]
    if chunk_elements is None:
        return fn(arrays)
    rows = 1 << max(3, (chunk_elements // width).bit_length() - 1)  # a power of two, >= 8
    chunks = -(-batch // rows)
    if chunks == 1 or batch % chunks:
        return fn(arrays)
    split = lambda x: jnp.swapaxes(x.reshape((batch // chunks, chunks) + x.shape[1:]), 0, 1)  # noqa: E731
    merge = lambda x: jnp.swapaxes(x, 0, 1).reshape((batch,) + x.shape[2:])  # noqa: E731
    return jax.tree.map(merge, jax.lax.map(fn, jax.tree.map(split, arrays)))
