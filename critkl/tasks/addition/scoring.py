"""Judging generated episodes against the reference: success, termination, the final
token; the RL reward; and the sampler's streaming end-of-episode rule. Pure jnp."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from critkl.tasks.addition.problems import MAX_SUPPORTED_DIGITS
from critkl.tasks.addition.tokenizer import EOS_ID, PAD_ID, token_id
from critkl.tasks.base import Episodes, Outcome

_NEWLINE = token_id("\n")
_SLASH = token_id("/")


def _two_smallest(x, y):
    """Reduction step keeping the two smallest values (first <= second) of each side."""
    return jnp.minimum(x[0], y[0]), jnp.minimum(jnp.maximum(x[0], y[0]), jnp.minimum(x[1], y[1]))


def score(tokens: jax.Array, reference: Episodes) -> Outcome:
    """Judge generated episodes: tokens [B, T] (prompt then generation, any ids)
    against the rendered `reference` episodes of the same problems.

    An episode ends at the second newline after the first `/` of the generation
    (the newline of `</scratch>`, then the result line's), or at the first PAD/EOS,
    or at the last position. It succeeds if it ended the first way and its result
    line is exactly the reference's. Never raises and never produces NaN. Reads neither the
    reference's roles nor its list indices. The whole batch in one pass (in chunks of rows:
    `critkl.chunks.score`).
    """
    chex.assert_rank(tokens, 2)
    size = tokens.shape[1]
    # Positions in int16 where they fit, and each scan over [B, T] one (variadic) reduction
    # that finds several first positions at once: on XLA:CPU these scans are memory-bound,
    # and this is several times faster than an any() + argmax() per position sought.
    index_type = jnp.int16 if size < 2**15 else jnp.int32
    none = jnp.asarray(size, index_type)  # "not found"
    position = jnp.broadcast_to(jnp.arange(size, dtype=index_type), tokens.shape)
    column = lambda x: x[:, None].astype(index_type)  # noqa: E731  [B] -> [B, 1]
    at = lambda flags: jnp.where(flags, position, none)  # noqa: E731
    generated = position >= column(reference.prompt_length)

    slash, stop = jax.lax.reduce(
        (at((tokens == _SLASH) & generated),
         at(((tokens == PAD_ID) | (tokens == EOS_ID)) & generated)),
        (none, none), lambda x, y: (jnp.minimum(x[0], y[0]), jnp.minimum(x[1], y[1])), (1,))
    after_slash = at((tokens == _NEWLINE) & (position > column(slash)))
    first_newline, second_newline = jax.lax.reduce(
        (after_slash, jnp.full_like(after_slash, none)), (none, none), _two_smallest, (1,))
    stop = stop.astype(jnp.int32)
    line_start = first_newline.astype(jnp.int32) + 1
    line_end = second_newline.astype(jnp.int32)  # the result line's end
    ended_by_format = line_end < jnp.minimum(stop, size)

    expected_length = reference.result_length  # the reference's last positions
    width = 2 * (MAX_SUPPORTED_DIGITS + 1)
    window = jnp.arange(width)[None, :]
    inside = window < expected_length[:, None]

    def line_of(seq, start):
        index = jnp.clip(start[:, None] + window, 0, seq.shape[1] - 1)
        return jnp.take_along_axis(seq, index, axis=1)

    expected = line_of(reference.tokens, reference.length - expected_length)
    found = line_of(tokens, line_start)
    success = (
        ended_by_format
        & (line_end - line_start + 1 == expected_length)
        & ((found == expected) | ~inside).all(axis=1)
    )
    last = jnp.minimum(jnp.minimum(line_end, stop), size - 1)
    return Outcome(success, ended_by_format | (stop < size), last.astype(jnp.int32))


def stop_rule(state: jax.Array, token: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Streaming form of the end of an episode, for the sampler.

    state [B] int32 starts at 0: 1 after the first `/`, +1 at each newline after
    it. Returns (new state, ended [B] bool): ended at the second such newline or
    at PAD/EOS, as in `score`.
    """
    seen_slash = state > 0
    state = jnp.where(~seen_slash & (token == _SLASH), 1, state)
    state = jnp.where(seen_slash & (token == _NEWLINE), state + 1, state)
    ended = (state >= 3) | (token == PAD_ID) | (token == EOS_ID)
    return state, ended
