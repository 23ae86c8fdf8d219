"""Batched autoregressive generation with a preallocated key/value cache.

A few `lax.while_loop`s over positions (`cache_windows`: each attends over a cache just long
enough for its positions), one token per sequence per iteration, no Python per token. Works
under `jax.jit` and `jax.vmap` (over params, rng, prompts or temperature), the cache updated in
place either way (`critkl.vmap_rules`).

Sequence b draws its tokens with its own key, `fold_in(rng, b)`, so that what it writes does
not depend on the other sequences of the batch. On a CPU the batch is decoded in groups, one
group after the other, each as many sequences as keep the model's weights and the group's
key/value cache within the CPU strategy's budget (`decode_rows`): its cache stays in
the processor's caches, which reading the whole batch's cache at every token does not, and a
group stops as soon as its own sequences end.

Shapes: B batch, P prompt buffer width, M max_length (prompt + generated), V vocabulary.

Prompts of different lengths: the whole prompt buffer [B,P] is prefilled in one call; a
sequence whose prompt is shorter than P gets wrong cache entries past its prompt, but the loop
starts at the shortest prompt length and, at position t, feeds every sequence its own token
(the prompt token while t < its prompt length, else a sampled one), rewriting cache entry t
before any later position attends to it.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax import lax

from critkl import losses, strategy as strategies, vmap_rules
from critkl.model import KVCache
from critkl.models import cache_for, module_for
from critkl.tasks.base import EOS_ID, PAD_ID

StopFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


class Generation(NamedTuple):
    """Result of `generate`.

    tokens   [B,M] int32: prompt, then generated tokens, then PAD_ID.
    logprobs [B,M] float32: log-prob of each generated token under the sampling distribution
             (softmax(logits / temperature), or softmax(logits) when greedy); 0 elsewhere.
    lengths  [B] int32: prompt + generated tokens, through the last generated token.
    done     [B] bool: ended by stop_fn (False: cut at max_length).
    hidden   [B,M,D] float32 with keep_hidden, else None: the model's final hidden state at
             each position (as the model's `__call__` returns it on `tokens`) through the last
             generated token, so that a value head needs no second forward pass; 0 at
             positions the loop never reached.
    """

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    done: jax.Array
    hidden: jax.Array | None = None


class _LoopState(NamedTuple):
    """Carry of the decode loop; `position` is the position written by the next iteration."""

    position: jax.Array  # scalar int32
    tokens: jax.Array  # [B,M] int32
    logprobs: jax.Array  # [B,M] float32
    logits: jax.Array  # [B,V] float32, at position - 1
    cache: KVCache
    ended: jax.Array  # [B] bool
    stop_state: jax.Array  # [B] int32
    lengths: jax.Array  # [B] int32
    hidden: jax.Array | None  # [B,M,D] float32 with keep_hidden, else None


def default_stop(stop_state: jax.Array, token: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Ends a sequence on EOS_ID or PAD_ID. stop_state [B] int32 (unused), token [B] int32."""
    return stop_state, (token == EOS_ID) | (token == PAD_ID)


def choose_tokens(keys: jax.Array, logits: jax.Array, temperature) -> tuple[jax.Array, jax.Array]:
    """keys [B] (one per sequence), logits [B,V] float32 -> (tokens [B] int32, logprobs [B]
    float32).

    temperature > 0 samples from softmax(logits / temperature); temperature <= 0 takes the
    argmax, with its log-prob under softmax(logits). `temperature` may be traced.
    """
    greedy = temperature <= 0
    scaled = logits / jnp.where(greedy, 1.0, temperature)
    sampled = jax.vmap(jax.random.categorical)(keys, scaled)
    tokens = jnp.where(greedy, jnp.argmax(logits, axis=-1), sampled).astype(jnp.int32)
    return tokens, losses.token_logprobs(scaled, tokens)


CACHE_WINDOWS = 4  # decode loops, each attending over a cache just long enough for its positions


def cache_windows(prompt_width: int, max_length: int) -> tuple[int, ...]:
    """Cache lengths of the successive decode loops, increasing to max_length.

    Position t attends to positions <= t only, so the loop for positions up to W carries a
    cache of W positions: attention reads about 5/8 of what one max_length cache would cost.
    """
    step = -(-max_length // CACHE_WINDOWS)
    ends = [min(max_length, step * i) for i in range(1, CACHE_WINDOWS + 1)]
    return tuple(sorted({max(prompt_width, end) for end in ends}))


def _extend_cache(cache: KVCache, length: int) -> KVCache:
    """The cache padded with zeros to `length` positions (axis 2)."""
    pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, 0)))  # noqa: E731
    return KVCache(keys=tuple(map(pad, cache.keys)), values=tuple(map(pad, cache.values)))


def decode_rows(strategy: strategies.Strategy, params, config, max_length: int) -> int | None:
    """Sequences `strategy` decodes at a time (`strategies.Strategy.decode_rows`), for these
    weights and a key/value cache of max_length positions per sequence."""
    def nbytes(tree) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))

    cache = nbytes(jax.eval_shape(lambda: cache_for(config, 1, max_length)))
    return strategy.decode_rows(nbytes(params), cache)


def decode_groups(batch: int, rows_at_a_time: int) -> tuple[int, int]:
    """(groups, rows per group): the fewest groups of at most `rows_at_a_time` sequences that
    hold `batch`, as even as can be (the last group padded)."""
    groups = -(-batch // rows_at_a_time)
    return groups, -(-batch // groups)


@functools.partial(jax.jit, static_argnames=("config", "max_length", "stop_fn", "keep_hidden",
                                             "rows_at_a_time", "strategy"))
def generate(
    params,
    config,
    prompts: jax.Array,
    prompt_lengths: jax.Array,
    rng: jax.Array,
    *,
    max_length: int,
    temperature,
    stop_fn: StopFn = default_stop,
    keep_hidden: bool = False,
    rows_at_a_time: int | None = None,
    strategy: strategies.Strategy | None = None,
) -> Generation:
    """Continues each prompt until stop_fn ends it or max_length tokens are reached.

    params: the model's "params" pytree; config: its ModelConfig or LlamaConfig
    (`critkl.models.module_for`). prompts [B,P] int32, right-padded with PAD_ID;
    prompt_lengths [B] int32 in [1, P]. max_length (static): total length M, P <= M <=
    context_length. temperature: scalar, traced (<= 0 means greedy). stop_fn(stop_state [B]
    int32, token [B] int32) -> (stop_state, ended [B] bool), initial state zeros; it sees the
    generated tokens only, and the token that ends a sequence is kept (and counted in lengths).
    keep_hidden (static): also return the hidden states (`Generation.hidden`).
    rows_at_a_time (static): decode at most this many sequences at a time, group after group
    (default: `decode_rows` of the strategy (static), itself defaulting to the default
    devices': a few at a time on a CPU, the whole batch elsewhere). The tokens do not depend
    on it.
    """
    chex.assert_rank(prompts, 2)
    batch, prompt_width = prompts.shape
    chex.assert_shape(prompt_lengths, (batch,))
    if not prompt_width <= max_length <= config.context_length:
        raise ValueError(
            f"need prompt width ({prompt_width}) <= max_length ({max_length}) <= "
            f"context_length ({config.context_length})"
        )
    if rows_at_a_time is None:
        rows_at_a_time = decode_rows(strategies.resolve(strategy), params, config, max_length)
    if rows_at_a_time is None:
        rows_at_a_time = batch
    if rows_at_a_time < 1:
        raise ValueError(f"rows_at_a_time must be at least 1, got {rows_at_a_time}")
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, jnp.arange(batch))
    decode = vmap_rules.plain_when_mapped_once(functools.partial(
        _decode_in_groups, rows_at_a_time=rows_at_a_time, config=config, max_length=max_length,
        stop_fn=stop_fn, keep_hidden=keep_hidden))
    return decode(params, prompts, prompt_lengths.astype(jnp.int32), keys,
                  jnp.asarray(temperature, jnp.float32))


def _decode_in_groups(params, prompts, prompt_lengths, keys, temperature, *,
                      rows_at_a_time: int, **settings) -> Generation:
    """`_decode` on groups of at most `rows_at_a_time` sequences, one after the other; the
    last group is padded with copies of the last sequence, dropped from the result."""
    batch = prompts.shape[0]
    if batch <= rows_at_a_time:
        return _decode(params, prompts, prompt_lengths, keys, temperature, **settings)
    groups, rows = decode_groups(batch, rows_at_a_time)
    pad = groups * rows - batch

    def grouped(x):  # [B, ...] -> [groups, rows, ...]
        x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])
        return x.reshape((groups, rows) + x.shape[1:])

    out = lax.map(lambda group: _decode(params, *group, temperature, **settings),
                  jax.tree.map(grouped, (prompts, prompt_lengths, keys)))
    return jax.tree.map(lambda x: x.reshape((groups * rows,) + x.shape[2:])[:batch], out)


def _decode(params, prompts, prompt_lengths, keys, temperature, *, config,
            max_length: int, stop_fn: StopFn, keep_hidden: bool) -> Generation:
    """The decode loop of `generate` (arguments checked there)."""
    batch, prompt_width = prompts.shape
    model = module_for(config)
    variables = {"params": params}

    windows = cache_windows(prompt_width, max_length)
    logits, prompt_hidden, cache = model.apply(
        variables, prompts, cache_for(config, batch, windows[0]), method=type(model).prefill
    )
    # First position where some sequence samples (under vmap: of any instance; the others
    # replay their prompts until their own start).
    start = vmap_rules.minimum(prompt_lengths)
    last_logits = lax.dynamic_index_in_dim(logits, start - 1, axis=1, keepdims=False)  # [B,V]
    padded = jnp.pad(prompts, ((0, 0), (0, max_length - prompt_width)), constant_values=PAD_ID)
    prompt_mask = jnp.arange(max_length)[None, :] < prompt_lengths[:, None]
    tokens = jnp.where(prompt_mask, padded, PAD_ID)  # [B,M]: each prompt, then PAD

    def cond(state: _LoopState, window: int):
        # Under vmap, one scalar predicate: the loop runs until every instance is done (a
        # finished sequence writes nothing), so no carried buffer is copied at every step.
        return (state.position < window) & ~vmap_rules.all_true(state.ended)

    zero = jnp.zeros((), jnp.int32)

    def body(state: _LoopState) -> _LoopState:
        t = state.position
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
        sampled, logprob = choose_tokens(step_keys, state.logits, temperature)
        in_prompt = t < prompt_lengths
        active = ~in_prompt & ~state.ended  # sequences that sample at position t
        prompt_token = lax.dynamic_index_in_dim(state.tokens, t, axis=1, keepdims=False)
        token = jnp.where(in_prompt, prompt_token, jnp.where(state.ended, PAD_ID, sampled))
        stop_state, stops = stop_fn(state.stop_state, token)
        logprob = jnp.where(active, logprob, 0.0)
        logits, hidden, cache = model.apply(variables, token, t, state.cache,
                                            method=type(model).decode_step)
        if keep_hidden:
            hidden = vmap_rules.update_slice(state.hidden, hidden[:, None], (zero, t, zero))
        return _LoopState(
            position=t + 1,
            tokens=vmap_rules.update_slice(state.tokens, token[:, None], (zero, t)),
            logprobs=vmap_rules.update_slice(state.logprobs, logprob[:, None], (zero, t)),
            logits=logits,
            cache=cache,
            ended=state.ended | (active & stops),
            stop_state=jnp.where(active, stop_state, state.stop_state),
            lengths=jnp.where(active, t + 1, state.lengths),
            hidden=hidden if keep_hidden else None,
        )

    state = _LoopState(
        position=start,
        tokens=tokens,
        logprobs=jnp.zeros((batch, max_length), jnp.float32),
        logits=last_logits,
        cache=cache,
        ended=jnp.zeros((batch,), bool),
        stop_state=jnp.zeros((batch,), jnp.int32),
        lengths=prompt_lengths,
        # Positions from `start` on are rewritten by the loop (prefill saw PAD past a prompt).
        hidden=jnp.pad(prompt_hidden, ((0, 0), (0, max_length - prompt_width), (0, 0)))
        if keep_hidden else None,
    )
    for window, following in zip(windows, windows[1:] + (None,)):
        state = lax.while_loop(functools.partial(cond, window=window), body, state)
        if following is not None:  # the next positions need a longer cache
            state = state._replace(cache=_extend_cache(state.cache, following))
    return Generation(
        tokens=state.tokens, logprobs=state.logprobs, lengths=state.lengths, done=state.ended,
        hidden=state.hidden,
    )
