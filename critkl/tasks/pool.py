"""The pool a digit task renders from (`layout.lay_out` copies its pieces end to end): the
format's constant strings, laid end to end once, then each problem's digit entries.

A slot packs token, role and list index: token + ROLE_SHIFT * role + INDEX_SHIFT * (index + 1)
(index -1: not in a list). A piece is (offset, count): `count` slots from `offset`.
Shapes: K = digits of an entry.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from critkl.tasks.layout import INDEX_SHIFT, ROLE_SHIFT

Segments = tuple[tuple[str, str], ...]  # (text, role name) pairs


class PoolFormat:
    """A format's constant strings and slot encodings: `encode` maps text to token ids,
    `digit_0` is the id of "0" (digits are consecutive), `roles` maps role names to codes,
    `constants` names each constant string as segments."""

    def __init__(self, encode: Callable[[str], np.ndarray], digit_0: int,
                 roles: dict[str, int], constants: dict[str, Segments]):
        self._encode_text, self.digit_0, self.roles = encode, digit_0, roles
        slots, self.place, position = [], {}, 0
        for name, segments in constants.items():
            slots.append(self.encode(segments))
            self.place[name] = (position, slots[-1].shape[0])
            position += slots[-1].shape[0]
        self.constants = np.concatenate(slots)  # [P0] int32: every constant end to end

    def encode(self, segments: Segments) -> np.ndarray:
        """Slots [len(text)...] of (text, role) segments, not in a list."""
        return np.concatenate([self._encode_text(text) + ROLE_SHIFT * self.roles[role]
                               for text, role in segments]).astype(np.int32)

    def piece(self, name: str, shown=True) -> tuple[int, jax.Array]:
        """Piece of the constant `name`, empty where not `shown`."""
        offset, length = self.place[name]
        return offset, jnp.where(shown, length, 0)

    def digit(self, values: jax.Array, role: str) -> jax.Array:
        """Slots [...] of single digits [...], not in a list."""
        return self.digit_0 + values + ROLE_SHIFT * self.roles[role]

    def char(self, char: str, role: str, shape) -> jax.Array:
        """Slots [shape] of one character, not in a list."""
        return jnp.full(shape, int(self._encode_text(char)[0]) + ROLE_SHIFT * self.roles[role])

    def digits(self, digits: jax.Array, role: str, separator: int | None = None,
               indexed: bool = False) -> jax.Array:
        """Slots of digits [..., K] in display order: `d0,d1,...` with the token `separator`
        after each digit ([..., 2K]) or none ([..., K]). With `indexed`, digit j and the
        separator before it carry list position j."""
        size = digits.shape[-1]
        index = jnp.arange(size) if indexed else jnp.full((size,), -1)
        base = ROLE_SHIFT * self.roles[role]
        packed = self.digit(digits, role) + INDEX_SHIFT * (index + 1)
        if separator is None:
            return packed
        after = jnp.broadcast_to(separator + base + INDEX_SHIFT * (index + 2 if indexed else 0),
                                 packed.shape)
        return jnp.stack([packed, after], axis=-1).reshape(packed.shape[:-1] + (2 * size,))

    def pool(self, entries: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, int]]:
        """One problem's pool [P]: the constants, then `entries` (name -> slots [n]) in order;
        and each entry's offset in it."""
        offsets, position = {}, len(self.constants)
        for name, slots in entries.items():
            offsets[name] = position
            position += slots.shape[0]
        return jnp.concatenate([jnp.asarray(self.constants)] + list(entries.values())), offsets


def most_significant_first(digits: jax.Array, length) -> jax.Array:
    """Digits [..., K] (least significant first) of `length`-digit numbers [...] in display
    order: most significant first, zeros past the length."""
    size = digits.shape[-1]
    j = jnp.arange(size)
    length = jnp.asarray(length)[..., None]
    source = jnp.clip(length - 1 - j, 0, size - 1)
    return jnp.where(j < length, jnp.take_along_axis(digits, source, axis=-1), 0)


def digit_list(offset, count, shown=True) -> tuple[jax.Array, jax.Array]:
    """Piece: the first `count` digits of a pool entry with separators (`d,d,d`), empty where
    not `shown` or `count` is 0."""
    return offset, jnp.where(shown & (count > 0), 2 * count - 1, 0)
