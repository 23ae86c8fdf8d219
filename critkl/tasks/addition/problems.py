"""Problems on two numbers (addition's, multiplication's): operands as digit arrays, sampled
in jnp or built from Python ints.

Numbers are digit arrays, least significant digit first, zero past their length, so the
default 32-bit JAX handles operands of up to `MAX_SUPPORTED_DIGITS` digits exactly. The task's
parameters live in `critkl.tasks.addition.Addition`. Shapes: B = batch, D = digits (static).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MAX_SUPPORTED_DIGITS = 20


class Operands(NamedTuple):
    """A batch of problems on two numbers a and b (a + b, a * b)."""

    a: jax.Array      # [B, D] int32 digits, least significant first
    b: jax.Array      # [B, D] int32
    a_len: jax.Array  # [B] int32 number of digits of a, in 1..D
    b_len: jax.Array  # [B] int32


def check_digits(max_digits: int) -> None:
    if not 1 <= max_digits <= MAX_SUPPORTED_DIGITS:
        raise ValueError(
            f"max_digits={max_digits} is not supported: allowed 1..{MAX_SUPPORTED_DIGITS}"
        )


def _sample_numbers(rng: jax.Array, lengths: jax.Array, max_digits: int) -> jax.Array:
    """Uniform numbers of the given digit counts [B] -> digits [B, D].

    A 1-digit number is 0..9; a longer one has a leading digit 1..9.
    """
    digits_rng, lead_rng = jax.random.split(rng)
    batch = lengths.shape[0]
    digits = jax.random.randint(digits_rng, (batch, max_digits), 0, 10, jnp.int32)
    lead = jax.random.randint(lead_rng, (batch, 1), 1, 10, jnp.int32)
    position = jnp.arange(max_digits)[None, :]
    is_lead = (position == lengths[:, None] - 1) & (lengths[:, None] > 1)
    digits = jnp.where(is_lead, lead, digits)
    return jnp.where(position < lengths[:, None], digits, 0)


def sample_operands(rng: jax.Array, a_len: jax.Array, b_len: jax.Array,
                    max_digits: int) -> Operands:
    """Uniform numbers of a_len and b_len [B] digits, in arrays of max_digits."""
    a_rng, b_rng = jax.random.split(rng)
    return Operands(
        _sample_numbers(a_rng, a_len, max_digits),
        _sample_numbers(b_rng, b_len, max_digits),
        a_len.astype(jnp.int32),
        b_len.astype(jnp.int32),
    )


def sample_pretraining(rng: jax.Array, batch: int, n: int, digits: int) -> Operands:
    """"Up to N digits": each operand's digit count uniform in 1..n; arrays `digits` wide."""
    len_rng, num_rng = jax.random.split(rng)
    lengths = jax.random.randint(len_rng, (2, batch), 1, n + 1, jnp.int32)
    return sample_operands(num_rng, lengths[0], lengths[1], digits)


def sample_rl(rng: jax.Array, batch: int, n: int, k: int, digits: int) -> Operands:
    """RL on N+k, arrays `digits` wide: one operand ("difficult", a fair coin
    picks which) has exactly n+k digits; the other has 1..n digits half the time and n+1..n+k
    the other half (1..n always when k = 0). Also the "varying lengths" evaluation at n+k."""
    len_rng, half_rng, long_rng, swap_rng, num_rng = jax.random.split(rng, 5)
    short = jax.random.randint(len_rng, (batch,), 1, n + 1, jnp.int32)
    if k > 0:
        longer = jax.random.randint(long_rng, (batch,), n + 1, n + k + 1, jnp.int32)
        other = jnp.where(jax.random.bernoulli(half_rng, 0.5, (batch,)), longer, short)
    else:
        other = short
    difficult = jnp.full((batch,), n + k, jnp.int32)
    swap = jax.random.bernoulli(swap_rng, 0.5, (batch,))
    return sample_operands(
        num_rng, jnp.where(swap, other, difficult), jnp.where(swap, difficult, other), digits
    )


def sample_identical(rng: jax.Array, batch: int, length: int, max_digits: int) -> Operands:
    """Both operands exactly `length` digits (evaluation, paper Table 4)."""
    check_digits(max_digits)
    if not 1 <= length <= max_digits:
        raise ValueError(f"length={length} must be in 1..max_digits={max_digits}")
    lengths = jnp.full((batch,), length, jnp.int32)
    return sample_operands(rng, lengths, lengths, max_digits)


def is_int(x) -> bool:
    """Whether x is a Python or numpy integer (not a bool)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def operands_from_ints(pairs, max_digits: int) -> Operands:
    """[(a, b), ...] of non-negative Python ints -> Operands (numpy arrays)."""
    check_digits(max_digits)
    count = len(pairs)
    digits = np.zeros((2, count, max_digits), np.int32)
    lengths = np.zeros((2, count), np.int32)
    for row, pair in enumerate(pairs):
        for side, value in enumerate(pair):
            text = str(value)
            if not is_int(value) or value < 0 or len(text) > max_digits:
                raise ValueError(f"operand {value!r} must be an integer of 1..{max_digits} "
                                 "digits")
            digits[side, row, : len(text)] = [int(c) for c in reversed(text)]
            lengths[side, row] = len(text)
    return Operands(digits[0], digits[1], lengths[0], lengths[1])


def operands_to_ints(operands: Operands) -> list[tuple[int, int]]:
    """Operands -> [(a, b), ...] of Python ints."""
    def value(digits, length):
        return int("".join(str(d) for d in digits[:length][::-1]))

    a, b, a_len, b_len = (np.asarray(x) for x in operands)
    return [(value(a[i], a_len[i]), value(b[i], b_len[i])) for i in range(a.shape[0])]
