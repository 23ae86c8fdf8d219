"""Decision keys: every decision of an episode's scratch lines named by (line, role, list,
ordinal), e.g. (2, "operand", "b", 4) for "line 2 b-list #4", and coded as one integer per
position in pure jnp, so that trainers can track chosen decisions inside jit and vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from critkl.tasks.addition.scratchpad import ROLE, ROLE_NAMES
from critkl.tasks.addition.tokenizer import token_id
from critkl.tasks.base import Episodes

SCRATCH_ROLES = ("operand", "partial_result", "carry", "sum", "digit")
_OPEN = token_id("[")
_NEWLINE = token_id("\n")
_PARTS = ("a", "b", "A", "")   # which bracket of the line a list token follows; "" elsewhere
_MAX_ORDINAL = 64              # more positions than any (line, role, list) group has


def key_code(key: tuple) -> int:
    """The integer code of a decision key (line, role, list, ordinal), as `decision_codes`."""
    line, role, part, ordinal = key
    if role not in SCRATCH_ROLES or part not in _PARTS or not 0 <= ordinal < _MAX_ORDINAL:
        raise ValueError(f"not a decision key: {key!r} (role in {SCRATCH_ROLES}, list in "
                         f"{_PARTS}, ordinal in 0..{_MAX_ORDINAL - 1})")
    group = (line * len(ROLE_NAMES) + ROLE[role]) * len(_PARTS)
    return (group + _PARTS.index(part)) * _MAX_ORDINAL + ordinal


def key_of_code(code: int) -> tuple:
    group, ordinal = divmod(code, _MAX_ORDINAL)
    group, part = divmod(group, len(_PARTS))
    line, role = divmod(group, len(ROLE_NAMES))
    return (line, ROLE_NAMES[role], _PARTS[part], ordinal)


def decision_codes(episodes: Episodes) -> jax.Array:
    """The decision key of every position as one integer ([B, L] int32, -1 off the scratch
    lines' decisions); pure jnp, so it runs inside jit and vmap.

    A key is (line, role, list, ordinal): line counts scratch lines from 1; list is "a", "b"
    or "A" (which bracket of the line the position follows) for operand and partial-result
    tokens, else ""; ordinal counts the positions of the same (line, role, list) before this
    one. `key_code` gives a key's integer.
    """
    tokens, role = episodes.tokens, episodes.role
    width = tokens.shape[1]
    position = jnp.arange(width)[None, :]
    inside = (position >= episodes.prompt_length[:, None]) & (
        position < episodes.length[:, None])
    scratch = inside & jnp.isin(role, jnp.array([ROLE[r] for r in SCRATCH_ROLES]))
    started = jnp.cumsum(scratch, axis=1) > 0
    line_ends = (tokens == _NEWLINE) & started & inside
    line = 1 + jnp.cumsum(line_ends, axis=1) - line_ends
    opens = jnp.cumsum(tokens == _OPEN, axis=1)
    # Brackets opened in this line so far: opens minus those before the line's start.
    before_line = lax.cummax(jnp.where(line_ends, opens, 0), axis=1)
    brackets = opens - jnp.pad(before_line[:, :-1], ((0, 0), (1, 0)))
    is_list = (role == ROLE["operand"]) | (role == ROLE["partial_result"])
    part = jnp.where(is_list, jnp.clip(brackets, 1, 3) - 1, _PARTS.index(""))
    group = jnp.where(scratch, (line * len(ROLE_NAMES) + role) * len(_PARTS) + part,
                      jnp.iinfo(jnp.int32).max // width)
    # ordinal: rank among the earlier positions of the same group (a stable sort by group).
    order = jnp.argsort(group * width + position, axis=1)
    sorted_group = jnp.take_along_axis(group, order, axis=1)
    index = jnp.broadcast_to(position, group.shape)
    first = jnp.concatenate([jnp.ones_like(sorted_group[:, :1], bool),
                             sorted_group[:, 1:] != sorted_group[:, :-1]], axis=1)
    ordinal_sorted = index - lax.cummax(jnp.where(first, index, 0), axis=1)
    ordinal = jnp.take_along_axis(ordinal_sorted, jnp.argsort(order, axis=1), axis=1)
    return jnp.where(scratch, group * _MAX_ORDINAL + ordinal, -1).astype(jnp.int32)


def key_label(key: tuple, token: str) -> str:
    """e.g. "line 2 b-list #4 digit": the token's kind (digit, or the separator itself)."""
    line, role, part, ordinal = key
    where = f"{part}-list" if part else role.replace("_", " ")
    kind = "digit" if token.isdigit() else repr(token)
    return f"line {line} {where} #{ordinal} {kind}"
