"""Array programs every task's rendering shares: laying pieces of a pool end to end
(`lay_out`), packing episodes into pre-training streams (`pack`), span masks. Pure jnp.

A rendered slot packs a token id, its role and its list index into one int32:
slot = token + ROLE_SHIFT * role + INDEX_SHIFT * (index + 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from critkl.tasks.base import PAD_ID, Episodes

ROLE_SHIFT = 1 << 6     # token ids are below 64 (base.MAX_VOCAB_SIZE)
INDEX_SHIFT = 1 << 12   # at most 64 roles

_BLOCK = 32


def prefix_sum(x: jax.Array) -> jax.Array:
    """Inclusive cumulative sum of small ints along the last axis (a multiple of 32).

    Two triangular matmuls in float32 (exact while sums stay below 2**24), within
    and across blocks of 32: on XLA:CPU several times faster than `jnp.cumsum`,
    which lowers to a slow reduce_window.
    """
    size = x.shape[-1]
    blocks = x.reshape(x.shape[:-1] + (size // _BLOCK, _BLOCK)).astype(jnp.float32)
    within = blocks @ jnp.triu(jnp.ones((_BLOCK, _BLOCK), jnp.float32))
    before = within[..., -1] @ jnp.triu(jnp.ones((size // _BLOCK,) * 2, jnp.float32), k=1)
    return (within + before[..., None]).reshape(x.shape).astype(jnp.int32)


def round_up(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def lay_out(pool, offsets, counts, size: int):
    """Copy every piece's slots end to end, for a batch: pool [B, P], offsets and
    counts [B, K] -> tokens, roles, indices [B, size] and lengths [B].

    Position p inside piece k reads pool[p + jump_k] with jump_k = offset_k - start_k.
    Adding jump_k - jump_(k-1) at each piece's start and summing over positions
    gives every position its jump (empty pieces cancel out), with no search.
    """
    batch, pieces = counts.shape
    pad = ((0, 0), (0, round_up(pieces) - pieces))
    counts, offsets = jnp.pad(counts, pad), jnp.pad(offsets, pad)
    ends = prefix_sum(counts)
    starts = ends - counts
    steps = jnp.diff(offsets - starts, axis=1, prepend=0)
    width = round_up(size)
    starts_here = jax.vmap(
        lambda s, v: jnp.zeros((width,), jnp.int32).at[s].add(v, mode="drop"))(starts, steps)
    position = jnp.arange(width)[None, :]
    source = jnp.clip(position + prefix_sum(starts_here), 0, pool.shape[1] - 1)
    # A gather from the flattened pool: on XLA:CPU about twice as fast as a batched one.
    rows = jnp.arange(batch)[:, None] * pool.shape[1]
    out = pool.reshape(-1)[(source + rows).reshape(-1)].reshape(batch, width)
    out = jnp.where(position < ends[:, -1:], out, -1)[:, :size]
    present = out >= 0  # bit operations: integer division is slow on CPU
    tokens = jnp.where(present, out & (ROLE_SHIFT - 1), PAD_ID)
    role = jnp.where(present, (out >> 6) & (INDEX_SHIFT // ROLE_SHIFT - 1), 0)
    index = jnp.where(present, (out >> 12) - 1, -1)
    return tokens, role, index, ends[:, -1]


def span_mask(start: jax.Array, stop: jax.Array, width: int) -> jax.Array:
    """[B, width] bool: True at positions t with start[b] <= t < stop[b] (start, stop [B]);
    e.g. the positions an episode's target (or a generation) takes after its prompt."""
    position = jnp.arange(width)[None, :]
    return (position >= start[:, None]) & (position < stop[:, None])


def pack(episodes: Episodes, streams: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Lay episodes end to end into `streams` rows of `width` tokens, as pre-training
    on text does, so every position up to `width` is trained.

    episodes: a batch of streams * m episodes (m per row, in order). Returns tokens
    [streams, width] int32, target mask [streams, width] bool: True where the token
    is one the model must learn to write (not a prompt token, not past the last
    episode), and the episode each position holds [streams, width] int32
    (`episode_index`). The last episode of a row is cut at `width`.
    """
    per_row = episodes.tokens.shape[0] // streams
    size = episodes.tokens.shape[1]
    if per_row * streams != episodes.tokens.shape[0]:
        raise ValueError(f"{episodes.tokens.shape[0]} episodes do not split into {streams} streams")
    slots = (episodes.tokens + ROLE_SHIFT * episodes.role).reshape(streams, per_row * size)
    offsets = jnp.broadcast_to(jnp.arange(per_row, dtype=jnp.int32) * size, (streams, per_row))
    counts = episodes.length.reshape(streams, per_row)
    tokens, role, _, total = lay_out(slots, offsets, counts, width)
    inside = jnp.arange(width)[None, :] < total[:, None]
    return tokens, inside & (role != 0), episode_index(counts, width)


def episode_positions(episodes: jax.Array) -> jax.Array:
    """Each position's distance from the start of its episode: episodes [S, W] int32
    (`episode_index`) -> [S, W] int32 (0 at each episode's first token)."""
    position = jnp.arange(episodes.shape[1], dtype=jnp.int32)[None, :]
    starts = jnp.concatenate([jnp.ones_like(episodes[:, :1], dtype=bool),
                              episodes[:, 1:] != episodes[:, :-1]], axis=1)
    return position - jax.lax.cummax(jnp.where(starts, position, 0), axis=1)


def episode_index(lengths: jax.Array, width: int) -> jax.Array:
    """Which of its row's episodes each position of a packed stream holds: lengths [S, K]
    (the episodes laid end to end, in order) -> [S, width] int32 in 0..K (K past the last)."""
    ends = jnp.cumsum(lengths, axis=1)
    position = jnp.arange(width, dtype=jnp.int32)
    return jnp.sum(position[None, None, :] >= ends[:, :, None], axis=1, dtype=jnp.int32)
