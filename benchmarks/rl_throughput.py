"""RL throughput at `mini` scale: one run against a vmapped sweep of runs.

    python benchmarks/rl_throughput.py [--runs 8] [--iterations 2]

Each measurement is `iterations` RL iterations (collect 50 episodes of the
4-digit RL distribution with the KV-cached sampler at temperature 2, score them,
values and GAE, one PPO epoch of 5 minibatch steps on the fused loss) of every
run, from the shipped `mini-n3` model, in one jitted scan; no evaluation.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from critkl import rl
from critkl.pretrained import load_pretrained


def measure(config: rl.RLConfig, model_config, params, runs: int) -> tuple[float, float, float]:
    """(episodes/s, generated tokens/s, seconds) of `runs` runs side by side."""
    functions = rl.make_train(config, model_config)
    hypers = rl.stack_hypers([rl.RLHyper()] * runs)
    rngs = jax.vmap(jax.random.key)(jnp.arange(runs))
    state = jax.jit(jax.vmap(functions.init, in_axes=(0, 0, None)))(rngs, hypers, params)

    def iterations(state, hyper):
        return jax.lax.scan(lambda s, _: functions.iteration(s, hyper, params), state, None,
                            length=config.iterations)

    step = jax.jit(jax.vmap(iterations))
    jax.block_until_ready(step(state, hypers))  # compile
    start = time.perf_counter()
    _, train = step(state, hypers)
    tokens = float(jax.block_until_ready(train["train/generated_tokens"]).sum())
    seconds = time.perf_counter() - start
    episodes = runs * config.iterations * config.episodes
    return episodes / seconds, tokens / seconds, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args()
    pre_config, params = load_pretrained("mini-n3")
    config = rl.RLConfig(n=3, extra_digits=1, iterations=args.iterations,
                         eval_every=args.iterations, ppo_epochs=1)
    print(f"{jax.device_count()} {jax.default_backend()} device(s); mini model, RL on 4 digits, "
          f"{config.episodes} episodes per collect, {args.iterations} iterations")
    print("| runs | episodes/s | generated tokens/s | seconds |")
    print("|---|---|---|---|")
    for runs in (1, args.runs):
        episodes, tokens, seconds = measure(config, pre_config.model_config, params, runs)
        print(f"| {runs} | {episodes:,.1f} | {tokens:,.0f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
