"""How strongly the KL term pulls against the policy gradient at CPU scale.

One batch of 50 episodes of the RL distribution (N+1 = 4 digits for `mini-n3`) sampled at
temperature 1, lambda 1 and the batch baseline (the defaults). Prints the norm of the
policy-gradient term's gradient, and of the KL term's (coefficient 5, certainty
temperature 1) for several beta, after 10 Adam steps of the policy gradient alone
(learning rate 1e-4) have moved the policy away from the reference. The committed output:

    python -m benchmarks.probes.gradient_balance > results/rl-probes/gradient_balance.txt
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from benchmarks.probes.common import load_model
from critkl import evaluation, losses, rl, weighting
from critkl.loss_config import LossConfig, LossHyper
from critkl.model import GPT, ValueHead
from critkl.tasks import addition, layout
from critkl.tasks.addition import Addition
from critkl.tasks.base import terminal_reward


def flat(tree):
    return jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini-n3")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--adam-steps", type=int, default=10)
    args = parser.parse_args(argv)
    model_config, reference, n = load_model(args.model)
    limit = addition.episode_limit(n + 1)
    task = Addition(n, 1)
    operands = task.sample_rl(jax.random.key(1), args.episodes)
    attempt = evaluation.attempt(reference, model_config, task, operands, jax.random.key(2),
                                 temperature=1.0, max_length=limit)
    outcome = attempt.outcome
    mask = layout.span_mask(attempt.reference.prompt_length, outcome.last + 1, limit)
    rewards = jnp.where(jnp.arange(limit)[None] == outcome.last[:, None],
                        terminal_reward(outcome)[:, None], 0.0)
    advantages, returns = losses.gae(rewards, jnp.zeros_like(rewards), mask, 1.0, 1.0)
    tokens = attempt.generation.tokens
    ref_logprobs = jax.nn.log_softmax(GPT(model_config).apply({"params": reference}, tokens)[0])
    batch = losses.RolloutBatch(tokens, mask, attempt.generation.logprobs,
                                losses.center_advantages(advantages, mask), returns, ref_logprobs,
                                weights=jnp.ones_like(returns))
    # The weight of token t is read from the reference's output for the state before it.
    before_token = rl.shift_right(ref_logprobs)
    value = ValueHead((128, 128)).init(jax.random.key(3), jnp.zeros((1, model_config.d_model)))
    config = LossConfig()

    def hyper(**changes):
        base = dict(kl_coef=0.0, beta=0.0, certainty_temperature=1.0, value_coef=0.0,
                    entropy_coef=0.0, policy_temperature=1.0)
        return LossHyper(**{**base, **changes})

    @jax.jit
    def gradient(policy, loss_hyper):
        weights = weighting.prioritized_kl_weights(
            before_token, loss_hyper.beta, loss_hyper.certainty_temperature, loss_hyper.intercept)

        def loss(p):
            logits, hidden = GPT(model_config).apply({"params": p}, tokens)
            values = ValueHead((128, 128)).apply(value, hidden)
            return losses.fused_loss(logits, values, batch._replace(weights=weights), loss_hyper,
                                     config)[0]

        return jax.grad(loss)(policy)

    print(f"episodes {args.episodes}, sampled success {float(outcome.success.mean()):.2f}")
    optimizer = optax.adam(1e-4)
    policy, state = reference, optimizer.init(reference)
    for _ in range(args.adam_steps):
        updates, state = optimizer.update(gradient(policy, hyper()), state, policy)
        policy = optax.apply_updates(policy, updates)
    policy_gradient = flat(gradient(policy, hyper()))
    print(f"after {args.adam_steps} Adam steps of the policy gradient: |policy-gradient term| "
          f"{float(jnp.linalg.norm(policy_gradient)):.4f}")
    print("| beta | norm of the KL term's gradient (coefficient 5) | ratio to the policy gradient |")
    print("|---|---|---|")
    policy_norm = float(jnp.linalg.norm(policy_gradient))  # 0 when every episode scored alike
    for beta in (0.0, 50.0, 150.0, 1000.0):
        kl_gradient = flat(gradient(policy, hyper(kl_coef=5.0, beta=beta))) - policy_gradient
        norm = float(jnp.linalg.norm(kl_gradient))
        print(f"| {beta:g} | {norm:.3f} | {f'{norm / policy_norm:.0f}' if policy_norm else 'n/a'} |")


if __name__ == "__main__":
    main()
