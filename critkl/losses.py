"""The fused RL loss on arrays: PPO/A2C, value, entropy and the prioritized KL; GAE.

Shapes: B batch, T time (positions of an episode), V vocabulary.

Nothing here runs a model: the trainer passes the policy's outputs (logits, values) and the
frozen reference's log-probs, so that the loss blocks serve any trainer.

Alignment (as `critkl.sampling.Generation`): per-position targets (old log-probs, advantages,
returns, the action mask) are indexed by the position t of a generated token. Model outputs
(logits, values, reference log-probs) are indexed as the model emits them: the output at t - 1
produced token t and is the value of the state before it; position 0 is a prompt token, never an
action.

Prioritized KL (METHOD.md section 3): each token's KL term is weighted by
w = (1 - b) * certainty(reference) ** beta + b, so the policy may leave the reference where the
reference is uncertain (critical tokens) and stays near it elsewhere. The trainer computes w
once per collect (`critkl.weighting`, where the paper's rule is one of a family that may also
act on the policy gradient and the clip range) and passes it in the batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax import lax

from critkl.loss_config import DEFAULT_BETA, KL_KINDS, SAMPLE_KL_KINDS, LossConfig, LossHyper
from critkl.weighting import certainty, target_weights

# Buckets of the KL weight for reporting (name, low, high): w < 0.1 (critical-like tokens),
# 0.1 <= w < 0.9, w >= 0.9 (routine), w taken at the paper's beta whatever the run's beta.
BUCKET_BETA = DEFAULT_BETA
KL_BUCKETS = (("low", 0.0, 0.1), ("mid", 0.1, 0.9), ("high", 0.9, math.inf))


# ---------------------------------------------------------------------------------------------
# Building blocks


def kl_estimate(logp: jax.Array, ref_logp: jax.Array, kind: str) -> jax.Array:
    """Schulman's estimators of KL(policy || reference) on sampled tokens: [...] -> [...].

    logp, ref_logp: log-probs of the sampled tokens under the policy and the reference.
    k1 = logp - ref_logp; k2 = 0.5 (logp - ref_logp)^2; k3 = (r - 1) - log r, r = exp(ref_logp -
    logp) (never negative). `kind` is static.
    """
    log_ratio = ref_logp - logp
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * jnp.square(log_ratio)
    if kind == "k3":
        return jnp.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r} (allowed: {SAMPLE_KL_KINDS})")


def exact_kl(logits: jax.Array, ref_logits: jax.Array) -> jax.Array:
    """KL(p || q) = sum_a p(a) (log p(a) - log q(a)) over the vocabulary: [..., V] -> [...].

    p = softmax(logits), q = softmax(ref_logits).
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    ref_logp = jax.nn.log_softmax(ref_logits, axis=-1)
    return jnp.sum(jnp.exp(logp) * (logp - ref_logp), axis=-1)


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log softmax(logits)[tokens]: logits [..., V], tokens [...] int -> [...]."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `values` where `mask` is True (0 where it is nowhere): equal shapes -> []."""
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def kl_per_token(logits: jax.Array, ref_logits: jax.Array, actions: jax.Array, kind: str):
    """KL(policy || reference) at each state: logits, ref_logits [..., V], actions [...] -> [...].

    kind (static): "k1", "k2", "k3" (estimators on the sampled `actions`) or "exact" (sum over
    the vocabulary; ignores `actions`).
    """
    if kind == "exact":
        return exact_kl(logits, ref_logits)
    if kind not in SAMPLE_KL_KINDS:
        raise ValueError(f"unknown kl kind {kind!r} (allowed: {KL_KINDS})")
    logp, ref_logp = token_logprobs(logits, actions), token_logprobs(ref_logits, actions)
    return kl_estimate(logp, ref_logp, kind)


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma, lam):
    """Generalized advantage estimation over the last axis: [B, T] -> (advantages, returns) [B, T].

    rewards[t]: reward for generating token t; values[t]: value of the state before token t;
    mask[t]: t is an action of the episode. Positions where mask is False are outside the
    episode (prompt before, padding after): advantage and return 0 there, and the value after
    the last True position is 0 (terminal). gamma and lam may be traced.
    """
    chex.assert_equal_shape((rewards, values, mask))
    rewards, values = rewards.astype(jnp.float32), values.astype(jnp.float32)

    def step(carry, x):
        next_value, next_advantage = carry
        reward, value, inside = x
        delta = reward + gamma * next_value - value
        advantage = jnp.where(inside, delta + gamma * lam * next_advantage, 0.0)
        return (jnp.where(inside, value, 0.0), advantage), advantage

    time_major = lambda x: jnp.moveaxis(x, -1, 0)
    zeros = jnp.zeros(rewards.shape[:-1], jnp.float32)
    _, advantages = lax.scan(
        step, (zeros, zeros), (time_major(rewards), time_major(values), time_major(mask)),
        reverse=True,
    )
    advantages = jnp.moveaxis(advantages, 0, -1)
    return advantages, jnp.where(mask, advantages + values, 0.0)


def center_advantages(advantages: jax.Array, mask: jax.Array) -> jax.Array:
    """Advantages minus their mean over the action tokens (mask True): [B, T] -> [B, T], 0
    outside the mask."""
    chex.assert_equal_shape((advantages, mask))
    return jnp.where(mask, advantages - masked_mean(advantages, mask), 0.0)


def group_advantages(rewards: jax.Array, group_size: int, baseline: str) -> jax.Array:
    """Each episode's advantage from its group: rewards [B] -> [B], B = problems * group_size
    with a problem's episodes adjacent (static group_size and baseline, see
    `critkl.loss_config.LossConfig`). GRPO divides by the group's standard deviation with Bessel's
    correction (as TRL does) plus 1e-4."""
    groups = rewards.reshape(-1, group_size).astype(jnp.float32)
    mean = groups.mean(axis=1, keepdims=True)
    if baseline == "grpo":
        advantages = (groups - mean) / (jnp.std(groups, axis=1, ddof=1, keepdims=True) + 1e-4)
    elif baseline == "dr_grpo":
        advantages = groups - mean
    elif baseline == "rloo":
        advantages = (groups - mean) * group_size / (group_size - 1)
    else:
        raise ValueError(f"not a group baseline: {baseline!r}")
    return advantages.reshape(rewards.shape)


# ---------------------------------------------------------------------------------------------
# Configuration


class RolloutBatch(NamedTuple):
    """Collected episodes; per-position arrays indexed by the position of the generated token.

    tokens        [B,T] int32: prompt, then generated tokens, then PAD.
    action_mask   [B,T] bool: True where the policy generated the token (False at position 0).
    old_logprobs  [B,T] float32: log-prob of each generated token under the acting policy
                  softmax(old_logits / policy_temperature).
    advantages    [B,T] float32.
    returns       [B,T] float32: targets of the value of the state before each token.
    ref_logprobs  [B,T,V] float32: the frozen reference's log-probs over the vocabulary
                  (temperature 1), as it emits them on `tokens` (position t predicts t + 1);
                  computed once per collect.
    weights       [B,T] float32: the token weighting's w of token t (`critkl.weighting`: 1
                  routine, towards 0 decisive), computed once per collect.
    """

    tokens: jax.Array
    action_mask: jax.Array
    old_logprobs: jax.Array
    advantages: jax.Array
    returns: jax.Array
    ref_logprobs: jax.Array
    weights: jax.Array


# ---------------------------------------------------------------------------------------------
# The loss


def per_token_kl_penalty(
    logits: jax.Array, ref_logits: jax.Array, actions: jax.Array, weights: jax.Array,
    hyper: LossHyper, config: LossConfig,
) -> jax.Array:
    """w * kl aligned to token positions, to subtract from the rewards: [B,T] float32.

    logits, ref_logits [B,T,V]: policy and reference outputs (temperature 1) on the episode
    tokens, compared at hyper.kl_temperature; actions [B,T] int32: the episode tokens;
    weights [B,T]: w of token t. Position t holds the penalty of token t (from the outputs at
    t - 1); position 0 is 0. Not masked: multiply by the action mask.
    """
    chex.assert_equal_shape((logits, ref_logits))
    chex.assert_equal_shape((actions, weights))
    chex.assert_shape(actions, logits.shape[:2])
    prev_logits, prev_ref = logits[:, :-1], ref_logits[:, :-1]
    penalty = weights[:, 1:] * kl_per_token(
        prev_logits / hyper.kl_temperature, prev_ref / hyper.kl_temperature, actions[:, 1:],
        config.kl_kind
    )
    return jnp.pad(penalty, ((0, 0), (1, 0)))


def fused_loss(
    logits: jax.Array, values: jax.Array, batch: RolloutBatch, hyper: LossHyper,
    config: LossConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The whole RL loss of one batch of episodes -> (loss scalar, metrics of scalars).

    logits [B,T,V] and values [B,T]: the policy's outputs and its value head on batch.tokens;
    batch.ref_logprobs: the reference's (no gradient flows into it). Averages over the batch's
    action tokens:
      policy_loss   PPO: -mean(w_pg min(ratio A, clip(ratio, 1 +- eps) A)), ratio =
                    exp(logp_T - old); A2C: -mean(w_pg logp_T A); logp_T under
                    softmax(logits / policy_temperature).
      value_loss    0.5 mean((V - returns)^2), weighted by value_coef in the loss.
      entropy       mean entropy of softmax(logits / policy_temperature), weighted by
                    -entropy_coef.
      weighted_kl   mean(w_kl kl) of the policy against the reference, both at kl_temperature,
                    weighted by kl_coef in the loss when kl_placement == "loss".
    w_kl, w_pg and each token's eps come from batch.weights and the weighting's targets
    (`critkl.weighting.target_weights`; the paper's case: w_kl = w, w_pg = 1, eps fixed); they
    carry no gradient.
    Metrics also give the exact KL at temperature 1 by bucket of the tokens' weight at the
    paper's beta (`KL_BUCKETS`: kl_w_low, kl_w_mid, kl_w_high, and the share of action
    tokens in each, tokens_w_*), so that arms of any beta compare on the same tokens.
    config is static (hashable).
    """
    tokens = batch.tokens
    chex.assert_rank(tokens, 2)
    chex.assert_equal_shape((tokens, batch.action_mask, batch.old_logprobs, batch.advantages,
                             batch.returns, batch.weights, values))
    chex.assert_equal_shape((logits, batch.ref_logprobs))
    ref_logp = lax.stop_gradient(batch.ref_logprobs)  # as logits: equal up to a constant

    # Position t - 1 of the outputs acts at position t of the batch arrays.
    logits, ref_logp, values = logits[:, :-1], ref_logp[:, :-1], values[:, :-1]
    actions = tokens[:, 1:]
    mask = batch.action_mask[:, 1:]
    old_logprobs, advantages, returns, weights = (
        x[:, 1:] for x in (batch.old_logprobs, batch.advantages, batch.returns, batch.weights)
    )
    targets = target_weights(config, lax.stop_gradient(weights), hyper)
    mean = lambda x: masked_mean(x, mask)  # noqa: E731  over the batch's action tokens

    scaled_logp = jax.nn.log_softmax(logits / hyper.policy_temperature, axis=-1)
    logp = jnp.take_along_axis(scaled_logp, actions[..., None], axis=-1)[..., 0]
    log_ratio = logp - old_logprobs
    ratio = jnp.exp(log_ratio)
    if config.algorithm == "ppo":
        clipped = jnp.clip(ratio, 1.0 - targets.clip_epsilon, 1.0 + targets.clip_epsilon)
        policy_loss = -mean(targets.policy * jnp.minimum(ratio * advantages, clipped * advantages))
    else:
        policy_loss = -mean(targets.policy * logp * advantages)
    value_loss = 0.5 * mean(jnp.square(values - returns))
    entropy = mean(-jnp.sum(jnp.exp(scaled_logp) * scaled_logp, axis=-1))

    kl = kl_per_token(logits / hyper.kl_temperature, ref_logp / hyper.kl_temperature, actions,
                      config.kl_kind)
    weighted_kl = mean(targets.kl * kl)

    loss = policy_loss + hyper.value_coef * value_loss - hyper.entropy_coef * entropy
    if config.kl_placement == "loss":
        loss = loss + hyper.kl_coef * weighted_kl
    metrics = {
        "loss": loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "kl": mean(kl),
        "weighted_kl": weighted_kl,
        "weight": mean(targets.kl),
        "pg_weight": mean(targets.policy),
        "clip_fraction": mean((jnp.abs(ratio - 1.0) > targets.clip_epsilon).astype(jnp.float32)),
        "approx_kl": mean(jnp.expm1(-log_ratio) + log_ratio),  # k3 of old vs new acting policy
        "certainty": mean(certainty(ref_logp, hyper.certainty_temperature)),
        **kl_by_weight_bucket(logits, ref_logp, mask, hyper.certainty_temperature),
    }
    return loss, jax.tree.map(lax.stop_gradient, metrics)


def kl_by_weight_bucket(logits: jax.Array, ref_logits: jax.Array, mask: jax.Array,
                        certainty_temperature) -> dict[str, jax.Array]:
    """Exact KL(policy || reference) at temperature 1, averaged over the masked tokens of each
    weight bucket, and each bucket's share of the masked tokens.

    logits, ref_logits [B,T,V], mask [B,T] bool. A token's bucket is set by its weight
    certainty(ref, certainty_temperature) ** BUCKET_BETA (`KL_BUCKETS`).
    """
    weight = certainty(ref_logits, certainty_temperature) ** BUCKET_BETA
    kl = exact_kl(logits, ref_logits)
    count = jnp.maximum(jnp.sum(mask), 1)
    metrics = {}
    for name, low, high in KL_BUCKETS:
        inside = mask & (weight >= low) & (weight < high)
        metrics[f"kl_w_{name}"] = masked_mean(kl, inside)
        metrics[f"tokens_w_{name}"] = jnp.sum(inside) / count
    return metrics
