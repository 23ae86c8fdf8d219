"""Primitives with their own `jax.vmap` rules: the sampler's buffers updated in place, and the
parts of a sweep that run one run at a time.

`jax.vmap` of `lax.dynamic_update_slice` becomes a scatter even when the start indices are
not mapped, and a `lax.while_loop` whose predicate is mapped guards every carried buffer with
a `select` at every iteration. Inside the decode loop both copy the key/value cache once per
token (XLA:CPU: 32 cache copies in the compiled program of a vmapped sampler, none in the
plain one). The functions here carry their own vmap rules (`jax.custom_batching.custom_vmap`):

- `update_slice`: with unmapped start indices, one `dynamic_update_slice` on the batched
  operand (start 0 on the mapped axis), which XLA updates in place;
- `plain_when_mapped_once`: a vmap over one instance (as a single fine-tuning run is vmapped)
  runs the function unmapped, since a unit mapped axis makes XLA:CPU copy the cache anyway;
- `all_true`, `minimum` and `maximum`: reduce over the mapped axes too and return an unmapped
  scalar, so that a vmapped loop keeps one scalar predicate (it runs until every mapped instance
  is done) and one scalar start, and a vmapped `lax.switch` one branch index;
- `one_at_a_time`: the mapped instances run one after the other, each as it would alone (a
  sweep's sampling and update chunks on a CPU: each run at its own width, with one run's
  buffers in memory), or batched (`strategy.Strategy.runs_in_turn` chooses).

Use the reductions only where running longer, starting earlier or computing over more positions
leaves the results unchanged (the sampler's finished sequences write nothing; earlier positions
replay the prompt; positions past an episode's end are masked out of the loss). None of
these functions may be differentiated (custom_vmap has no autodiff rule); the sampler and the
update's chunks differentiate inside them, never through them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _batched(x: jax.Array, is_batched: bool, axis_size: int) -> jax.Array:
    """x with a leading mapped axis of `axis_size` (broadcast when it has none)."""
    return x if is_batched else jnp.broadcast_to(x, (axis_size,) + jnp.shape(x))


@jax.custom_batching.custom_vmap
def update_slice(operand: jax.Array, update: jax.Array, start: tuple) -> jax.Array:
    """`lax.dynamic_update_slice(operand, update, start)`, in place under vmap.

    start: a tuple of scalar int32 indices, one per axis of operand.
    """
    return lax.dynamic_update_slice(operand, update, start)


@update_slice.def_vmap
def _update_slice_vmap(axis_size, in_batched, operand, update, start):
    operand_batched, update_batched, start_batched = in_batched
    operand = _batched(operand, operand_batched, axis_size)
    update = _batched(update, update_batched, axis_size)
    if any(start_batched):  # a different position per instance: a scatter cannot be avoided
        start = tuple(_batched(s, b, axis_size) for s, b in zip(start, start_batched))
        return jax.vmap(lax.dynamic_update_slice)(operand, update, start), True
    zero = jnp.zeros((), jnp.asarray(start[0]).dtype)
    return update_slice(operand, update, (zero, *start)), True


def _over_every_instance(reduce):
    """reduce(x) -> scalar, whose vmap rule reduces over the mapped axes too (unmapped result)."""
    wrapped = jax.custom_batching.custom_vmap(lambda x: reduce(x))

    @wrapped.def_vmap
    def _rule(axis_size, in_batched, x):
        return wrapped(x), False  # x carries the mapped axis: reduced with the rest

    return wrapped


all_true = _over_every_instance(jnp.all)  # jnp.all(x); under vmap, over every instance
minimum = _over_every_instance(jnp.min)   # jnp.min(x); under vmap, over every instance
maximum = _over_every_instance(jnp.max)   # jnp.max(x); under vmap, over every instance


def plain_when_mapped_once(fn):
    """fn with a vmap rule: over one instance, fn itself on the instance; otherwise jax.vmap(fn).

    fn takes positional pytrees of arrays and returns a pytree of arrays.
    """
    return _mapped(fn, sequential=False)


def one_at_a_time(fn, in_turn: bool):
    """fn with a vmap rule that runs the mapped instances one after the other (`lax.map`),
    each as fn alone would run; with in_turn False it is jax.vmap(fn) (over one instance, fn
    itself either way).

    For the parts of a vmapped sweep whose shapes depend on each run's data (an update chunk
    cut to the run's own width) and whose memory grows with the runs in flight (activations,
    the sampler's key/value cache). On a CPU, batching runs makes no product faster (one run's
    already fill the core), so each run keeps its own shapes and one run's memory is live at a
    time; accelerators gain from the batch. fn takes positional pytrees of arrays, closes over
    nothing traced, and returns a pytree of arrays.
    """
    return _mapped(fn, sequential=in_turn)


def _mapped(fn, sequential: bool):
    wrapped = jax.custom_batching.custom_vmap(fn)

    @wrapped.def_vmap
    def _rule(axis_size, in_batched, *args):
        leaves, tree = jax.tree.flatten(args)
        batched = jax.tree.leaves(tuple(in_batched))
        if axis_size == 1:
            out = wrapped(*tree.unflatten([x[0] if b else x for x, b in zip(leaves, batched)]))
            return _all_mapped(jax.tree.map(lambda y: y[None], out))
        if sequential:
            def one(instance):
                it = iter(instance)
                return wrapped(*tree.unflatten([next(it) if b else x
                                                for x, b in zip(leaves, batched)]))

            return _all_mapped(lax.map(one, [x for x, b in zip(leaves, batched) if b]))
        in_axes = jax.tree.map(lambda b: 0 if b else None, tuple(in_batched))
        return _all_mapped(jax.vmap(fn, in_axes=in_axes)(*args))

    return wrapped


def _all_mapped(out):
    """A vmap rule's result: `out` and its batched flags (every output has the mapped axis)."""
    return out, jax.tree.map(lambda _: True, out)
