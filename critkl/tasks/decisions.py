"""Decisions named by a task's keys, for any task: which positions hold chosen decisions
(`at_keys`), the positions reached with a correct prefix, and the causal map's critical
decisions of generated episodes. Pure jnp apart from `decision_keys` (host)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from critkl.tasks.base import Episodes, TextTask


def decision_keys(task: TextTask, episodes: Episodes) -> list[dict[int, tuple]]:
    """Per problem, {position: key} of its decisions (`task.decision_codes` on the host)."""
    codes = np.asarray(task.decision_codes(episodes))
    return [{int(t): task.key_of_code(int(codes[b, t])) for t in np.nonzero(codes[b] >= 0)[0]}
            for b in range(codes.shape[0])]


def at_keys(task: TextTask, codes: jax.Array, keys) -> jax.Array:
    """codes [B, L] (`task.decision_codes`) -> [B, L] bool: the position's key is in `keys`."""
    if not keys:
        return jnp.zeros(codes.shape, bool)
    return jnp.isin(codes, jnp.array([task.key_code(key) for key in keys], jnp.int32))


def _to_width(x: jax.Array, width: int, fill) -> jax.Array:
    """[B, L] -> [B, width]: cut, or padded with `fill`."""
    return jnp.pad(x, ((0, 0), (0, max(width - x.shape[1], 0))), constant_values=fill)[:, :width]


def correct_prefix(tokens: jax.Array, reference: Episodes) -> jax.Array:
    """tokens[:t] equals the reference episode's first t tokens: [B, T] bool (tokens [B, T]
    int32; the reference may be narrower or wider)."""
    same_so_far = jnp.cumprod(tokens == _to_width(reference.tokens, tokens.shape[1], -1),
                              axis=1).astype(bool)
    return jnp.pad(same_so_far[:, :-1], ((0, 0), (1, 0)), constant_values=True)


def causal_critical_mask(task: TextTask, tokens: jax.Array, reference: Episodes,
                         keys) -> jax.Array:
    """Token t is one of the decision `keys` and tokens[:t] is the correct prefix: [B, T]
    bool (tokens [B, T]; reference: the problems' correct episodes)."""
    codes = _to_width(task.decision_codes(reference), tokens.shape[1], -1)
    return at_keys(task, codes, keys) & correct_prefix(tokens, reference)
