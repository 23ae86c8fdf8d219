"""Per-token weighting of the RL loss: a signal, a rule and the targets it acts on.

The paper's prioritized KL is one member of a family of rules that treat a few uncertain,
decisive tokens differently from the routine rest. Here each is three independent choices
(`critkl.loss_config.LossConfig`: weight_signal, weight_rule, weight_targets):

- the **signal**, a per-token *confidence* s: high on routine tokens, low on decisive ones;
  - "certainty": the reference's 1 + log max p / log|V| at the certainty temperature (paper);
  - "reference_entropy" / "policy_entropy": 1 - H / log|V| of the reference / of the acting
    policy (at the policy temperature);
  - "policy_max_prob": the acting policy's max p (at the policy temperature);
  - "covariance": minus (log pi(a) - mean)(A - mean) over the batch's action tokens (Cui et
    al. 2025: tokens whose log-prob and advantage covary most are the decisive ones);
  - "oracle": 0 at the causally critical decisions of a correct prefix (`critkl.analysis.causal`), 1
    elsewhere;
- the **rule**, from s to a weight w in [0, 1] (1: routine, 0: decisive):
  - "power": w = (1 - b) s ** beta + b (the paper; s in [0, 1]);
  - "quantile": w = 0 on the focus_share of the batch's action tokens with the lowest s;
  - "episode_quantile": the same within each episode (Archer's per-response percentile);
  - "top_k": w = 0 on the focus_tokens action tokens of the batch with the lowest s;
  - "shuffled_power": the power rule's weights permuted among each episode's action tokens
    (`shuffle_within_episodes`): the same weights, so the same amount of KL, at unrelated
    tokens; the control that separates *where* the prioritized KL is removed from *how much*;
- the **targets**, what w changes:
  - "kl": the KL term is weighted by w (the paper; Archer: no KL on decisive tokens);
  - "kl_only": by 1 - w (the KL only on decisive tokens: KL-Cov);
  - "pg": the policy-gradient term by 1 - w (the gradient only from decisive tokens: 80/20);
  - "pg_detach": the policy gradient by w (decisive tokens' gradient detached: Clip-Cov);
  - "clip": the PPO clip range widens from clip_epsilon to wide_clip_epsilon as w falls to 0
    (Archer's wider clip on high-entropy tokens).

Signals are computed once per collect by the trainer from the acting policy and the frozen
reference, so quantiles and top-k are taken over the whole collected batch. Every numeric
parameter (beta, intercept, temperatures, focus_share, focus_tokens, wide_clip_epsilon) is a
`LossHyper` field: traced, so a sweep vmaps over it. Shapes: B episodes, T positions, V
vocabulary; per-position arrays are aligned as `critkl.losses.RolloutBatch` (position t:
token t and the state before it).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from critkl.loss_config import LossConfig, LossHyper


def certainty(ref_logits: jax.Array, temperature) -> jax.Array:
    """1 + log(max softmax(ref_logits / temperature)) / log|V|: [..., V] -> [...] in [0, 1].

    1 means fully certain (one-hot), 0 uniform. `temperature` may be traced.
    """
    log_max = jnp.max(jax.nn.log_softmax(ref_logits / temperature, axis=-1), axis=-1)
    return jnp.clip(1.0 + log_max / math.log(ref_logits.shape[-1]), 0.0, 1.0)


def prioritized_kl_weights(ref_logits: jax.Array, beta, temperature, intercept=0.0) -> jax.Array:
    """The paper's KL weight (1 - intercept) * certainty(ref_logits, temperature) ** beta +
    intercept: [..., V] -> [...]. beta = 0 gives weights 1 (standard KL); all may be traced."""
    return power_rule(certainty(ref_logits, temperature), beta, intercept)


def normalized_entropy_confidence(logits: jax.Array, temperature) -> jax.Array:
    """1 - H(softmax(logits / temperature)) / log|V|: [..., V] -> [...] in [0, 1]."""
    logp = jax.nn.log_softmax(logits / temperature, axis=-1)
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return jnp.clip(1.0 - entropy / math.log(logits.shape[-1]), 0.0, 1.0)


def covariance_confidence(logprobs: jax.Array, advantages: jax.Array,
                          mask: jax.Array) -> jax.Array:
    """-(logp - mean logp)(A - mean A), means over the masked tokens: [B, T] -> [B, T]."""
    count = jnp.maximum(jnp.sum(mask), 1)
    centred = lambda x: x - jnp.sum(jnp.where(mask, x, 0.0)) / count  # noqa: E731
    return -centred(logprobs) * centred(advantages)


class SignalInputs(NamedTuple):
    """What the signals read, aligned to token positions ([B, T] or [B, T, V]).

    ref_logits    [B,T,V]: the reference's outputs for the state before token t (any
                  constant shift: log-probs do).
    policy_logits [B,T,V] or None: the acting policy's, likewise (temperature 1).
    logprobs      [B,T]: log-prob of token t under the acting policy (policy temperature).
    advantages    [B,T].
    critical      [B,T] bool or None: token t is a causally critical decision of a correct
                  prefix.
    mask          [B,T] bool: the action tokens.
    """

    ref_logits: jax.Array
    policy_logits: jax.Array | None
    logprobs: jax.Array
    advantages: jax.Array
    critical: jax.Array | None
    mask: jax.Array


def confidence(signal: str, inputs: SignalInputs, hyper: LossHyper) -> jax.Array:
    """The per-token confidence s of `signal` (static; see the module docstring): [B, T]."""
    if signal == "certainty":
        return certainty(inputs.ref_logits, hyper.certainty_temperature)
    if signal == "reference_entropy":
        return normalized_entropy_confidence(inputs.ref_logits, 1.0)
    if signal == "policy_entropy":
        return normalized_entropy_confidence(inputs.policy_logits, hyper.policy_temperature)
    if signal == "policy_max_prob":
        return jnp.max(jax.nn.softmax(inputs.policy_logits / hyper.policy_temperature, axis=-1),
                       axis=-1)
    if signal == "covariance":
        return covariance_confidence(inputs.logprobs, inputs.advantages, inputs.mask)
    if signal == "oracle":
        return jnp.where(inputs.critical, 0.0, 1.0)
    raise ValueError(f"unknown weight signal {signal!r}")


def power_rule(confidence_values: jax.Array, beta, intercept=0.0) -> jax.Array:
    """(1 - intercept) * s ** beta + intercept: [...] -> [...]."""
    return (1.0 - intercept) * confidence_values ** beta + intercept


def lowest(confidence_values: jax.Array, mask: jax.Array, count, axis=None) -> jax.Array:
    """Masked positions among the `count` lowest values (along `axis`, or over all): [B, T]
    bool. Ties at the threshold are all included; count may be traced and fractional
    (rounded up); count <= 0 selects nothing."""
    flat = axis is None
    values = confidence_values.reshape(1, -1) if flat else confidence_values
    inside = mask.reshape(1, -1) if flat else mask
    ranked = jnp.sort(jnp.where(inside, values, jnp.inf), axis=1)
    available = jnp.sum(inside, axis=1, keepdims=True)
    k = jnp.minimum(jnp.ceil(count).astype(jnp.int32), available)
    threshold = jnp.take_along_axis(ranked, jnp.maximum(k - 1, 0), axis=1)
    chosen = inside & (values <= threshold) & (k >= 1)
    return chosen.reshape(confidence_values.shape)


SHUFFLE_KEY = 20250207  # the shuffled rule's permutations: fixed, independent of the tokens


def shuffle_within_episodes(weights: jax.Array, mask: jax.Array) -> jax.Array:
    """`weights` [B, T] with the values at each row's masked positions permuted among those
    positions by a fixed pseudo-random order (`SHUFFLE_KEY`), the others untouched. Each
    episode keeps its multiset of weights; which token gets which depends on nothing the
    model computes."""
    scores = jax.random.uniform(jax.random.key(SHUFFLE_KEY), weights.shape)
    positions = jnp.broadcast_to(jnp.arange(weights.shape[1], dtype=jnp.float32), weights.shape)
    by_position = jnp.argsort(jnp.where(mask, positions, jnp.inf), axis=1)
    by_score = jnp.argsort(jnp.where(mask, scores, jnp.inf), axis=1)
    rows = jnp.arange(weights.shape[0])[:, None]
    # The i-th masked position (in order) gets the weight of the i-th in random order; past
    # the masked ones both orders list the unmasked positions alike, so those keep theirs.
    return weights.at[rows, by_position].set(jnp.take_along_axis(weights, by_score, axis=1))


def routine_weight(rule: str, confidence_values: jax.Array, mask: jax.Array,
                   hyper: LossHyper) -> jax.Array:
    """The weight w of `rule` (static): 1 on routine tokens, towards 0 on decisive ones:
    [B, T] -> [B, T] float32."""
    if rule == "power":
        return power_rule(confidence_values, hyper.beta, hyper.intercept)
    if rule == "quantile":
        count = hyper.focus_share * jnp.sum(mask)
        return 1.0 - lowest(confidence_values, mask, count).astype(jnp.float32)
    if rule == "episode_quantile":
        count = hyper.focus_share * jnp.sum(mask, axis=1, keepdims=True)
        return 1.0 - lowest(confidence_values, mask, count, axis=1).astype(jnp.float32)
    if rule == "top_k":
        return 1.0 - lowest(confidence_values, mask, hyper.focus_tokens).astype(jnp.float32)
    if rule == "shuffled_power":
        return shuffle_within_episodes(
            power_rule(confidence_values, hyper.beta, hyper.intercept), mask)
    raise ValueError(f"unknown weight rule {rule!r}")


def token_weights(config: LossConfig, inputs: SignalInputs, hyper: LossHyper) -> jax.Array:
    """w of the loss's weighting (1 everywhere when config.prioritized is False), without
    gradient: [B, T] float32."""
    if not config.prioritized:
        return jnp.ones(inputs.mask.shape, jnp.float32)
    values = confidence(config.weight_signal, inputs, hyper)
    weights = routine_weight(config.weight_rule, values, inputs.mask, hyper)
    return jax.lax.stop_gradient(weights.astype(jnp.float32))


class TargetWeights(NamedTuple):
    """What w does to each term of the loss: [B, T] each."""

    kl: jax.Array            # multiplies the per-token KL
    policy: jax.Array        # multiplies the per-token policy-gradient surrogate
    clip_epsilon: jax.Array  # the PPO clip range of each token


def target_weights(config: LossConfig, weights: jax.Array, hyper: LossHyper) -> TargetWeights:
    """Apply w [B, T] to the targets of config.weight_targets (the others untouched)."""
    ones = jnp.ones_like(weights)
    targets = config.weight_targets if config.prioritized else ()
    kl = weights if "kl" in targets else 1.0 - weights if "kl_only" in targets else ones
    policy = 1.0 - weights if "pg" in targets else weights if "pg_detach" in targets else ones
    epsilon = hyper.clip_epsilon * ones
    if "clip" in targets:
        epsilon = epsilon + (1.0 - weights) * (hyper.wide_clip_epsilon - hyper.clip_epsilon)
    return TargetWeights(kl, policy, epsilon)
