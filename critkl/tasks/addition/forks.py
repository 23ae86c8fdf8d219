"""A constructed causal fork, for the mechanism test (`experiments/mechanism.py`): episodes
whose operand list of `length` digits closes one digit early.

The prompt is the problem's own; from the fork on, the scratchpad is that of the problem
with that operand cut to its `length - 1` most significant digits, so the episode fails.
The first operand is the one cut when both have `length` digits. Pure jnp, like `render`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from critkl.tasks.addition.problems import Operands
from critkl.tasks.addition.scratchpad import render
from critkl.tasks.base import Episodes


def _drop_lowest_digit(digits: jax.Array, cut: jax.Array) -> jax.Array:
    """digits [B, D] (least significant first) without their lowest digit where cut [B]."""
    shifted = jnp.pad(digits[:, 1:], ((0, 0), (0, 1)))
    return jnp.where(cut[:, None], shifted, digits)


def render_closed_early(operands: Operands, close: jax.Array, length: int) -> Episodes:
    """Episodes of `operands` (as `render`: [B, L]); where close [B] is True and an operand
    has `length` digits (length >= 2), that operand's list closes after length - 1 digits."""
    if length < 2:
        raise ValueError(f"length={length} must be >= 2: a 1-digit list cannot close earlier")
    cut_a = close & (operands.a_len == length)
    cut_b = close & ~cut_a & (operands.b_len == length)
    shorter = Operands(_drop_lowest_digit(operands.a, cut_a), _drop_lowest_digit(operands.b, cut_b),
                       operands.a_len - cut_a, operands.b_len - cut_b)
    full, cut = render(operands), render(shorter)
    shift = (cut_a | cut_b).astype(jnp.int32)  # the cut problem's prompt is one token shorter
    position = jnp.arange(full.tokens.shape[1])[None, :]
    in_prompt = position < full.prompt_length[:, None]
    source = jnp.where(in_prompt, position, position - shift[:, None])

    def splice(whole: jax.Array, tail: jax.Array) -> jax.Array:
        return jnp.where(in_prompt, whole, jnp.take_along_axis(tail, source, axis=1))

    return Episodes(splice(full.tokens, cut.tokens), full.prompt_length, cut.length + shift,
                    splice(full.role, cut.role), splice(full.list_index, cut.list_index),
                    cut.result_length)
