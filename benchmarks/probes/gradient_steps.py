"""How far a step along the policy gradient can go before it hurts, on the toy.

The toy of `tests/test_rl.py`: the `tiny` model pre-trained on 1-digit problems
(batch 8, learning rate 3e-3, 700 steps), RL on 1-digit problems sampled at
temperature 1. Estimates the REINFORCE gradient of the success rate (reward +-1,
batch-mean baseline, lambda 1) from 4,096 episodes, then measures the success rate on
4,096 fresh episodes (the same problems and random numbers for every point) after
plain steps of several lengths (global parameter norm) up and down that gradient,
and after making the output sharper (the final layer norm scaled by 1 + s), a
direction along which far longer steps pay. Also prints the parameter norm that one
Adam step of learning rate 1e-4 moves (every parameter by about the learning rate).

The committed output:

    XLA_FLAGS=--xla_force_host_platform_device_count=1 \
        python -m benchmarks.probes.gradient_steps > results/rl-probes/gradient_steps.txt
"""

from __future__ import annotations

import argparse
import math
import tempfile

import jax
import jax.numpy as jnp
import optax

from benchmarks.probes.common import load_model
from critkl import evaluation, losses
from critkl.runs import pretraining
from critkl.config import PretrainConfig
from critkl.model import GPT
from critkl.tasks import layout
from critkl.tasks.addition import Addition
from critkl.tasks.base import terminal_reward

TASK = Addition(1, 0)  # RL on 1-digit problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=700,
                        help="pre-training steps (0: the untrained model, for tests)")
    parser.add_argument("--episodes", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=512, help="episodes per gradient batch")
    args = parser.parse_args(argv)
    steps, episodes_total = args.steps, args.episodes
    if steps:
        pre = PretrainConfig(
            model="tiny", max_digits=1, eval_extra_digits=2, batch_size=8, steps=steps,
            warmup_steps=min(20, steps - 1), learning_rate=3e-3, log_every=steps,
            eval_every=steps, eval_problems=16, checkpoint_every=steps)
        config = pre.model_config
        with tempfile.TemporaryDirectory() as run_dir:
            params = pretraining.pretrain(pre, run_dir, print_fn=lambda line: None).params
    else:
        config, params, _ = load_model("tiny-untrained")
    limit = TASK.episode_limit()

    def attempt(params, rng, size):
        operands = TASK.sample_rl(jax.random.fold_in(rng, 1), size)
        return evaluation.attempt(params, config, TASK, operands, jax.random.fold_in(rng, 2),
                                  temperature=1.0, max_length=limit)

    def success(params):
        return float(attempt(params, jax.random.key(777), episodes_total).outcome.success.mean())

    @jax.jit
    def reinforce_gradient(params, tokens, mask, advantage):
        """d/dparams of the sum over episodes of advantage * log pi(episode)."""
        def objective(p):
            logits, _ = GPT(config).apply({"params": p}, tokens)
            taken = losses.token_logprobs(logits[:, :-1], tokens[:, 1:])
            return jnp.sum(jnp.where(mask[:, 1:], taken * advantage[:, None], 0.0))
        return jax.grad(objective)(params)

    gradient = jax.tree.map(jnp.zeros_like, params)
    for chunk in range(episodes_total // args.chunk):
        episodes = attempt(params, jax.random.key(100 + chunk), args.chunk)
        mask = layout.span_mask(episodes.reference.prompt_length, episodes.outcome.last + 1, limit)
        reward = terminal_reward(episodes.outcome)
        part = reinforce_gradient(params, episodes.generation.tokens, mask, reward - reward.mean())
        gradient = jax.tree.map(jnp.add, gradient, part)
    norm = optax.tree.norm(gradient)
    count = sum(x.size for x in jax.tree.leaves(params))

    print(f"tiny model pre-trained {steps} steps on 1-digit problems; {count:,} parameters")
    print(f"success at temperature 1, {episodes_total} episodes: {success(params):.3f}")
    print(f"one Adam step at learning rate 1e-4 moves the parameters by norm ~"
          f"{1e-4 * math.sqrt(count):.3f}")
    print("| step norm | along the gradient | against it |")
    print("|---|---|---|")
    for length in (0.001, 0.003, 0.01, 0.02, 0.03, 0.1):
        moved = lambda sign: jax.tree.map(  # noqa: E731
            lambda p, g: p + sign * length * g / norm, params, gradient)
        print(f"| {length} | {success(moved(1)):.3f} | {success(moved(-1)):.3f} |")
    print("| sharper output: final norm x (1 + s) | success | step norm |")
    print("|---|---|---|")
    final = params["final_norm"]
    for scale in (0.05, 0.1, 0.2):
        sharper = {**params, "final_norm": jax.tree.map(lambda x: x * (1 + scale), final)}
        print(f"| s = {scale} | {success(sharper):.3f} | "
              f"{scale * float(optax.tree.norm(final)):.2f} |")


if __name__ == "__main__":
    main()
