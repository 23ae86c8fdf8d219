"""How strongly the KL term pulls against the policy gradient at CPU scale.

One batch of 50 episodes of the 4-digit RL distribution sampled from `mini-n3` at
temperature 1, lambda 1 and the batch baseline (the defaults). Prints the norm of
the policy-gradient term's gradient, and of the KL term's (coefficient 5, certainty
temperature 1) for several beta, after 10 Adam steps of the policy gradient alone
(learning rate 1e-4) have moved the policy away from the reference.

    python results/rl-probes/gradient_balance.py > results/rl-probes/gradient_balance.txt
"""

import jax
import jax.numpy as jnp
import optax

from critkl import addition, evaluation, losses
from critkl.model import GPT, ValueHead
from critkl.pretrained import load_pretrained


def flat(tree):
    return jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])


def main():
    pre_config, reference = load_pretrained("mini-n3")
    model_config = pre_config.model_config
    limit = addition.episode_limit(4)
    operands = addition.sample_rl(jax.random.key(1), 50, 3, 1, 4)
    attempt = evaluation.attempt(reference, model_config, operands, jax.random.key(2),
                                 temperature=1.0, max_length=limit)
    outcome = attempt.outcome
    position = jnp.arange(limit)[None]
    mask = (position >= attempt.reference.prompt_length[:, None]) & (
        position <= outcome.last[:, None])
    rewards = jnp.where(position == outcome.last[:, None],
                        addition.terminal_reward(outcome)[:, None], 0.0)
    advantages, returns = losses.gae(rewards, jnp.zeros_like(rewards), mask, 1.0, 1.0)
    tokens = attempt.generation.tokens
    ref_logprobs = jax.nn.log_softmax(GPT(model_config).apply({"params": reference}, tokens)[0])
    batch = losses.RolloutBatch(tokens, mask, attempt.generation.logprobs,
                                losses.center_advantages(advantages, mask), returns, ref_logprobs)
    value = ValueHead((128, 128)).init(jax.random.key(3), jnp.zeros((1, model_config.d_model)))
    config = losses.LossConfig()

    def hyper(**changes):
        base = dict(kl_coef=0.0, beta=0.0, certainty_temperature=1.0, value_coef=0.0,
                    entropy_coef=0.0, policy_temperature=1.0)
        return losses.LossHyper(**{**base, **changes})

    @jax.jit
    def gradient(policy, loss_hyper):
        def loss(p):
            logits, hidden = GPT(model_config).apply({"params": p}, tokens)
            values = ValueHead((128, 128)).apply(value, hidden)
            return losses.fused_loss(logits, values, batch, loss_hyper, config)[0]

        return jax.grad(loss)(policy)

    print(f"episodes 50, sampled success {float(outcome.success.mean()):.2f}")
    optimizer = optax.adam(1e-4)
    policy, state = reference, optimizer.init(reference)
    for _ in range(10):
        updates, state = optimizer.update(gradient(policy, hyper()), state, policy)
        policy = optax.apply_updates(policy, updates)
    policy_gradient = flat(gradient(policy, hyper()))
    print(f"after 10 Adam steps of the policy gradient: |policy-gradient term| "
          f"{float(jnp.linalg.norm(policy_gradient)):.4f}")
    print("| beta | norm of the KL term's gradient (coefficient 5) | ratio to the policy gradient |")
    print("|---|---|---|")
    for beta in (0.0, 50.0, 150.0, 1000.0):
        kl_gradient = flat(gradient(policy, hyper(kl_coef=5.0, beta=beta))) - policy_gradient
        norm = float(jnp.linalg.norm(kl_gradient))
        print(f"| {beta:g} | {norm:.3f} | {norm / float(jnp.linalg.norm(policy_gradient)):.0f} |")


if __name__ == "__main__":
    main()
