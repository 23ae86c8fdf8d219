"""Training and sampling throughput of the transformer, with achieved FLOP/s as a
fraction of a large float32 matmul measured in the same run.

    python benchmarks/model_throughput.py [--quick] [--one-device]

Training: one jitted pre-training step (forward, backward, AdamW) on packed
streams. Sampling: `critkl.sampling.generate` with the KV cache at temperature 2,
every sequence running to the full length. Model FLOPs count the matmuls of the
forward pass (2 per multiply-add; the backward pass twice that), attention over the
keys it computes: in training, each block of `QUERY_BLOCK` queries over the keys up
to its end; in sampling, each token over its decode loop's cache window.

Devices: as the training commands run (`parallel.use_cpu_cores`), one single-threaded device
per core with the batch split over them, the matmul one per device at once; with
`--one-device`, one default CPU device (XLA's own threading).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools

import jax
import jax.numpy as jnp

from timing import best_seconds

from critkl import sampling, supervised
from critkl.infra import parallel
from critkl.config import model_preset, ModelConfig, PretrainConfig
from critkl.model import QUERY_BLOCK, init_params
from critkl.tasks.addition.tokenizer import VOCAB_SIZE


PROMPT_WIDTH = 25  # the sampling rows' prompt, as an RL episode's
TRAINING_BATCH = 16  # packed streams of the context per training step (the mini rows)


def blocked_attended(time: int) -> float:
    """Keys per query that the full forward's blocked causal attention computes, on average."""
    blocks = [(lo, min(lo + QUERY_BLOCK, time)) for lo in range(0, time, QUERY_BLOCK)]
    return sum((hi - lo) * hi for lo, hi in blocks) / time


def windowed_attended(prompt_width: int, length: int) -> float:
    """Keys per generated token that the sampler computes (its cache window), on average."""
    windows = sampling.cache_windows(prompt_width, length)
    return sum(next(w for w in windows if w > t) for t in range(prompt_width, length)) / (
        length - prompt_width)


def forward_flops_per_token(config: ModelConfig, attended: float) -> float:
    """Matmul FLOPs of one token's forward pass, attending over `attended` positions."""
    d, layers = config.d_model, config.num_layers
    per_layer = 2 * (3 * d * d + d * d + 2 * d * config.d_ff) + 2 * 2 * attended * d
    return layers * per_layer + 2 * d * VOCAB_SIZE


def matmul_flops_per_second(size: int = 2048, repeats: int = 5, dtype=jnp.float32) -> float:
    """size^3 matmuls in `dtype`, one per device at once: FLOP/s of all devices together."""
    mesh = parallel.data_mesh()
    devices = mesh.devices.size
    a = jax.device_put(jnp.ones((devices, size, size), dtype), parallel.batch_sharding(mesh))
    matmul = jax.jit(lambda x: x @ x)
    return 2 * devices * size**3 / best_seconds(lambda: matmul(a).block_until_ready(), repeats)


def training(config: ModelConfig, batch: int, repeats: int) -> tuple[float, float]:
    """(tokens/s, FLOP/s) of optimizer steps (forward, backward, AdamW) on `batch`
    packed streams of the context, the batch sharded over all devices."""
    run = PretrainConfig(model="mini", steps=10, warmup_steps=1)
    tx = supervised.optimizer(run)
    mesh = parallel.data_mesh()
    tokens, targets, _ = jax.device_put(
        supervised.streams_batch(jax.random.key(0), dataclasses.replace(run, batch_size=batch)),
        parallel.batch_sharding(mesh))
    tokens, targets = tokens[:, :config.context_length], targets[:, :config.context_length]
    replicated = parallel.replicated(mesh)
    params = jax.device_put(init_params(jax.random.key(1), config), replicated)
    state = [params, jax.device_put(tx.init(params), replicated)]

    # The state keeps its layout from step to step: the timed calls run the compiled step.
    @functools.partial(jax.jit, out_shardings=replicated)
    def step(params, opt_state, tokens, targets):  # the batch an argument: split, not a constant
        (loss, _), grads = jax.value_and_grad(supervised.next_token_loss, has_aux=True)(
            params, config, tokens, targets)
        updates, opt_state = tx.update(grads, opt_state, params)
        return jax.tree.map(jnp.add, params, updates), opt_state, loss

    def one():
        state[0], state[1], loss = step(*state, tokens, targets)
        loss.block_until_ready()

    seconds = best_seconds(one, repeats)
    count = batch * config.context_length
    flops = 3 * forward_flops_per_token(config, blocked_attended(config.context_length)) * count
    return count / seconds, flops / seconds


def never_stop(stop_state: jax.Array, token: jax.Array):
    """A stop rule that ends no sequence: every one runs to the full length."""
    return stop_state, jnp.zeros(token.shape, bool)


def sampling_speed(config: ModelConfig, batch: int, length: int, repeats: int) -> tuple[float, float]:
    """(generated tokens/s, FLOP/s) of KV-cached sampling at temperature 2, the batch split
    over the devices."""
    mesh = parallel.data_mesh()
    params = jax.device_put(init_params(jax.random.key(0), config), parallel.replicated(mesh))
    prompts, lengths = jax.device_put(
        (jnp.full((batch, PROMPT_WIDTH), 5, jnp.int32), jnp.full((batch,), PROMPT_WIDTH, jnp.int32)),
        parallel.batch_sharding(mesh))

    def one():
        sampling.generate(params, config, prompts, lengths, jax.random.key(2), max_length=length,
                          temperature=2.0, stop_fn=never_stop).tokens.block_until_ready()

    seconds = best_seconds(one, repeats)
    generated = batch * (length - PROMPT_WIDTH)
    flops = forward_flops_per_token(config, windowed_attended(PROMPT_WIDTH, length)) * generated
    return generated / seconds, flops / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, mini only")
    parser.add_argument("--one-device", action="store_true",
                        help="one default CPU device, not one per core as the training commands")
    args = parser.parse_args()
    if not args.one_device:
        parallel.use_cpu_cores(TRAINING_BATCH)
    repeats = 2 if args.quick else 4
    mini = model_preset("mini")
    paper_width = dataclasses.replace(model_preset("paper"), num_layers=2, context_length=512)
    cases = [("mini (4x128)", mini, TRAINING_BATCH, 256)]
    if not args.quick:
        cases.append(("paper width (2x768)", paper_width, 4, 64))
    peak = matmul_flops_per_second()
    print(f"{jax.device_count()} {jax.default_backend()} device(s); float32 2048^3 matmul: "
          f"{peak / 1e9:.1f} GFLOP/s")
    print("| model | training tokens/s | training FLOP/s (share of matmul) | "
          "sampling tokens/s | sampling FLOP/s (share) |")
    print("|---|---|---|---|---|")
    for name, config, batch, sample_batch in cases:
        train_tokens, train_flops = training(config, batch, repeats)
        sample_tokens, sample_flops = sampling_speed(config, sample_batch, 280, repeats)
        print(f"| {name} | {train_tokens:,.0f} | {train_flops / 1e9:.1f} G ({train_flops / peak:.0%}) | "
              f"{sample_tokens:,.0f} | {sample_flops / 1e9:.1f} G ({sample_flops / peak:.0%}) |")


if __name__ == "__main__":
    main()
