"""Tests of critkl.losses: fused loss against an unfused loop, KL weights and estimators, GAE."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critkl import losses
from critkl.config import model_preset
from critkl.loss_config import PAPER_TEMPERATURES, LossConfig, LossHyper
from critkl.losses import (RolloutBatch, center_advantages, exact_kl, fused_loss, gae,
                           kl_estimate, kl_per_token, per_token_kl_penalty)
from critkl.weighting import certainty, prioritized_kl_weights
from critkl.model import GPT, ValueHead, init_params
from critkl.tasks.addition.tokenizer import PAD_ID, VOCAB_SIZE

CONFIG = model_preset("tiny")
BATCH, TIME = 3, 14
VALUE_SIZES = (16, 8)
# Non-default values, so that every term of the loss moves the value and the gradients.
HYPER = LossHyper(
    kl_coef=0.7,
    beta=3.0,
    certainty_temperature=1.5,
    intercept=-0.1,
    clip_epsilon=0.25,
    value_coef=0.3,
    entropy_coef=0.05,
    policy_temperature=1.7,
    kl_temperature=1.3,
)


def random_params(init_fn, seed, scale=0.3):
    """Parameters of init_fn's shapes drawn at random (no compile): N(0, scale^2), LayerNorm
    scales around 1, far from initialisation so that logits and values are not flat."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        centre = 1.0 if path[-1].key == "scale" else 0.0
        return jnp.asarray(centre + scale * rng.standard_normal(leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(init_fn))


@functools.partial(jax.jit, static_argnums=0)
def forward(config, params, tokens):
    return GPT(config).apply({"params": params}, tokens)


ALGORITHMS, KINDS = ("ppo", "a2c"), ("k1", "k2", "k3", "exact")
CASES = [  # every algorithm x kl_kind, prioritized on and off in a checkerboard; KL in reward
    (a, k, (i + j) % 2 == 0, "loss") for i, a in enumerate(ALGORITHMS) for j, k in enumerate(KINDS)
] + [("ppo", "k3", True, "reward"), ("a2c", "exact", False, "reward")]
CONFIGS = {case: LossConfig(case[0], case[1], case[3], case[2]) for case in CASES}


# These programs run once: a low LLVM optimisation level halves their compile time.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def run_once(fn, *args):
    """fn(*args), jitted and compiled for speed of compilation."""
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


@pytest.fixture(scope="module")
def setup():
    """Random tiny params (policy, value, reference) and a batch with prompts and padding."""
    rng = np.random.default_rng(0)
    init_gpt = lambda: init_params(jax.random.key(0), CONFIG)
    policy, ref = random_params(init_gpt, 1), random_params(init_gpt, 2)
    hidden = jnp.zeros((1, CONFIG.d_model))
    value = random_params(lambda: ValueHead(VALUE_SIZES).init(jax.random.key(0), hidden), 3)
    value = value["params"]

    tokens = rng.integers(2, VOCAB_SIZE, (BATCH, TIME)).astype(np.int32)
    mask = np.zeros((BATCH, TIME), bool)
    for b, (prompt, end) in enumerate([(2, TIME), (4, 9), (3, 12)]):
        mask[b, prompt:end] = True
        tokens[b, end:] = PAD_ID
    logits, _ = forward(CONFIG, policy, jnp.asarray(tokens))
    scaled = jax.nn.log_softmax(np.asarray(logits) / HYPER.policy_temperature, axis=-1)
    acting = np.take_along_axis(np.asarray(scaled)[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    # Off-policy noise so that some ratios fall outside the clip range and others inside.
    old = np.pad(acting + 0.3 * rng.standard_normal(acting.shape), ((0, 0), (1, 0)))
    ref_logits, _ = forward(CONFIG, ref, jnp.asarray(tokens))
    batch = RolloutBatch(
        # The trainer's weights: the paper's w of token t, from the reference's output at t - 1.
        weights=paper_weights(ref_logits, HYPER),
        tokens=jnp.asarray(tokens),
        action_mask=jnp.asarray(mask),
        old_logprobs=jnp.asarray(np.where(mask, old, 0.0), jnp.float32),
        advantages=jnp.asarray(np.where(mask, rng.standard_normal(mask.shape), 0.0), jnp.float32),
        returns=jnp.asarray(np.where(mask, rng.standard_normal(mask.shape), 0.0), jnp.float32),
        ref_logprobs=jax.nn.log_softmax(ref_logits, axis=-1),
    )
    return policy, value, ref, batch


def paper_weights(ref_logits, hyper):
    """The prioritized KL weight of each token position: [B, T, V] -> [B, T] (0 at t = 0)."""
    weights = prioritized_kl_weights(ref_logits[:, :-1], hyper.beta,
                                     hyper.certainty_temperature, hyper.intercept)
    return jnp.pad(weights, ((0, 0), (1, 0)))


def policy_loss(policy, value, batch, hyper, config):
    """fused_loss on the outputs of the policy and its value head, as the trainer runs it."""
    logits, hidden = GPT(CONFIG).apply({"params": policy}, batch.tokens)
    values = ValueHead(VALUE_SIZES).apply({"params": value}, hidden)
    return fused_loss(logits, values, batch, hyper, config)


@pytest.fixture(scope="module")
def fused(setup):
    """case -> ((loss, metrics), (policy grads, value grads)), in one program."""
    grad_fn = jax.value_and_grad(policy_loss, argnums=(0, 1), has_aux=True)
    policy, value, _, batch = setup

    def run(policy, value, batch):
        return [grad_fn(policy, value, batch, HYPER, c) for c in CONFIGS.values()]

    return dict(zip(CASES, run_once(run, policy, value, batch), strict=True))


def log_softmax(x):
    return x - jax.scipy.special.logsumexp(x, axis=-1, keepdims=True)


def value_mlp(params, h):
    """The critic written out by hand: ReLU layers, then a linear output. h [N,D] -> [N]."""
    for i in range(len(VALUE_SIZES)):
        layer = params[f"hidden_{i}"]
        h = jnp.maximum(h @ layer["kernel"] + layer["bias"], 0.0)
    return (h @ params["out"]["kernel"] + params["out"]["bias"])[:, 0]


def unfused_head_loss(logits, hidden, value, ref_logits, batch, hyper, config):
    """The loss from the policy's outputs, one example at a time.

    logits [B,T,V], hidden [B,T,D]: policy outputs; ref_logits [B,T,V] numpy constants. In each
    example, numpy index arrays pick the action positions and the outputs one step before.
    """
    tokens, mask = np.asarray(batch.tokens), np.asarray(batch.action_mask)
    old, advantages, returns = (np.asarray(x) for x in batch[2:5])
    vocab = ref_logits.shape[-1]
    eps = hyper.clip_epsilon
    totals = {"policy": 0.0, "value": 0.0, "entropy": 0.0, "kl": 0.0}
    count = 0
    for b in range(tokens.shape[0]):
        positions = np.flatnonzero(mask[b])
        before = positions - 1  # the outputs that produced the tokens at `positions`
        count += positions.size
        picked = np.arange(positions.size), tokens[b, positions]
        advantage = advantages[b, positions]
        scaled = log_softmax(logits[b][before] / hyper.policy_temperature)
        ratio = jnp.exp(scaled[picked] - old[b, positions])
        if config.algorithm == "ppo":
            clipped = jnp.clip(ratio, 1 - eps, 1 + eps)
            totals["policy"] -= jnp.sum(jnp.minimum(ratio * advantage, clipped * advantage))
        else:
            totals["policy"] -= jnp.sum(scaled[picked] * advantage)
        values = value_mlp(value, hidden[b][before])
        totals["value"] += jnp.sum(0.5 * (values - returns[b, positions]) ** 2)
        totals["entropy"] -= jnp.sum(jnp.exp(scaled) * scaled)

        logp = log_softmax(logits[b][before] / hyper.kl_temperature)
        ref = ref_logits[b, before]
        warm = ref / hyper.kl_temperature
        ref_logp = warm - np.log(np.sum(np.exp(warm - warm.max(-1, keepdims=True)), -1,
                                        keepdims=True))
        ref_logp -= warm.max(-1, keepdims=True)
        diff = logp[picked] - ref_logp[picked]
        kl = {
            "k1": lambda: diff,
            "k2": lambda: 0.5 * diff**2,
            "k3": lambda: jnp.exp(-diff) - 1 + diff,
            "exact": lambda: jnp.sum(jnp.exp(logp) * (logp - ref_logp), -1),
        }[config.kl_kind]()
        weight = np.ones(positions.size)
        if config.prioritized:
            cold = ref / hyper.certainty_temperature
            top = np.sum(np.exp(cold - cold.max(-1, keepdims=True)), -1)
            sure = 1 + np.log(1.0 / top) / np.log(vocab)
            weight = (1 - hyper.intercept) * sure**hyper.beta + hyper.intercept
        totals["kl"] += jnp.sum(weight * kl)
    means = {k: v / count for k, v in totals.items()}
    loss = (
        means["policy"]
        + hyper.value_coef * means["value"]
        - hyper.entropy_coef * means["entropy"]
    )
    if config.kl_placement == "loss":
        loss = loss + hyper.kl_coef * means["kl"]
    return loss


@pytest.fixture(scope="module")
def unfused(setup):
    """case -> (loss, (policy grads, value grads)).

    The gradients of each case's head loss w.r.t. the policy outputs are pulled back through
    one forward pass (chain rule), all in one program.
    """
    policy, value, ref, batch = setup
    ref_logits = np.asarray(forward(CONFIG, ref, batch.tokens)[0], np.float64)
    batch = RolloutBatch(*(np.asarray(x) for x in batch[:5]), None, None)  # constants, for numpy

    def run(policy, value):
        apply = lambda p: GPT(CONFIG).apply({"params": p}, batch.tokens)
        outputs, pullback = jax.vjp(apply, policy)
        head = jax.value_and_grad(unfused_head_loss, argnums=(0, 1, 2))
        results = [head(*outputs, value, ref_logits, batch, HYPER, c) for c in CONFIGS.values()]
        stacked = jax.tree.map(lambda *x: jnp.stack(x), *[grads[:2] for _, grads in results])
        (policy_grads,) = jax.vmap(pullback)(stacked)
        return [
            (loss, (jax.tree.map(lambda x: x[i], policy_grads), grads[2]))
            for i, (loss, grads) in enumerate(results)
        ]

    return dict(zip(CASES, run_once(run, policy, value), strict=True))


def assert_trees_close(actual, expected, rtol=1e-5):
    """Each leaf within rtol of the expected leaf's largest magnitude."""
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a), np.asarray(e)
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * np.abs(e).max() + 1e-12)


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_fused_loss_matches_unfused_loop(fused, unfused, case):
    (loss, metrics), grads = fused[case]
    expected, expected_grads = unfused[case]
    # The loss sums terms of order 1 that nearly cancel: absolute float32 rounding of 1e-7.
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    assert float(metrics["loss"]) == float(loss)
    assert 0 < float(metrics["clip_fraction"]) < 1
    assert case[2] or float(metrics["weight"]) == 1.0  # not prioritized: weights 1
    assert_trees_close(grads, expected_grads)


def test_no_gradient_flows_into_the_reference_log_probs(setup):
    """The reference's log-probs are data: the loss's gradient w.r.t. them is zero, although
    the KL (and the loss) depend on them."""
    policy, value, _, batch = setup
    config = CONFIGS[("ppo", "exact", False, "loss")]

    def loss_of_reference(ref_logprobs):
        return policy_loss(policy, value, batch._replace(ref_logprobs=ref_logprobs), HYPER,
                           config)

    (loss, metrics), grads = jax.value_and_grad(loss_of_reference, has_aux=True)(
        batch.ref_logprobs)
    assert float(metrics["kl"]) > 0
    assert not np.any(np.asarray(grads))
    shifted, _ = loss_of_reference(batch.ref_logprobs * 1.5)
    assert float(shifted) != float(loss)  # the loss does depend on them


def test_per_token_penalty_matches_fused_metric_and_vmaps_over_hyper(setup, fused):
    policy, _, ref, batch = setup
    case = ("ppo", "k3", True, "reward")
    (_, metrics), _ = fused[case]
    logits, _ = forward(CONFIG, policy, batch.tokens)
    ref_logits, _ = forward(CONFIG, ref, batch.tokens)
    penalty = per_token_kl_penalty(logits, ref_logits, batch.tokens, batch.weights, HYPER,
                                   CONFIGS[case])
    assert penalty.shape == batch.tokens.shape and not np.any(penalty[:, 0])
    mask = np.asarray(batch.action_mask)
    np.testing.assert_allclose(penalty[mask].mean(), metrics["weighted_kl"], rtol=1e-5, atol=1e-7)

    config = LossConfig(kl_kind="k2")
    betas = jnp.array([0.0, 3.0, 150.0])
    sweep = jax.vmap(
        lambda beta: per_token_kl_penalty(
            logits, ref_logits, batch.tokens, paper_weights(ref_logits, HYPER.replace(beta=beta)),
            HYPER, config
        )
    )(betas)
    for beta, row in zip(betas, sweep):
        hyper = HYPER.replace(beta=float(beta))
        expected = per_token_kl_penalty(
            logits, ref_logits, batch.tokens, paper_weights(ref_logits, hyper), hyper, config
        )
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-7)
    plain = per_token_kl_penalty(
        logits, ref_logits, batch.tokens, jnp.ones(batch.tokens.shape), HYPER,
        LossConfig(kl_kind="k2", prioritized=False)
    )
    np.testing.assert_allclose(sweep[0], plain, rtol=1e-6)  # beta = 0: standard KL


# ---------------------------------------------------------------------------------------------
# Certainty and prioritized weights

V = VOCAB_SIZE


def test_certainty_extremes_and_temperature():
    uniform = jnp.zeros((V,))
    peaked = jnp.zeros((V,)).at[5].set(100.0)
    assert float(certainty(uniform, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(certainty(peaked, 1.0)) == pytest.approx(1.0, abs=1e-6)
    logits = jnp.asarray(np.random.default_rng(0).standard_normal((4, V)) * 3, jnp.float32)
    expected = 1 + np.max(jax.nn.log_softmax(logits / 4.0), -1) / np.log(V)
    np.testing.assert_allclose(certainty(logits, 4.0), expected, rtol=1e-6)
    # A higher temperature flattens the distribution: less certain.
    assert np.all(np.asarray(certainty(logits, 4.0)) < np.asarray(certainty(logits, 1.0)))
    margin = jnp.zeros((V,)).at[0].set(8.0)
    p = math.exp(2.0) / (math.exp(2.0) + V - 1)  # temperature 4: margin 2
    assert float(certainty(margin, 4.0)) == pytest.approx(1 + math.log(p) / math.log(V), rel=1e-5)


def test_prioritized_weights():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.standard_normal((6, V)) * 5, jnp.float32)
    assert np.all(np.asarray(prioritized_kl_weights(logits, 0.0, 4.0)) == 1.0)  # standard KL
    uniform = jnp.zeros((V,))
    near_certain = jnp.zeros((V,)).at[3].set(30.0)
    assert float(prioritized_kl_weights(uniform, 150.0, 1.0)) < 1e-6
    assert float(prioritized_kl_weights(near_certain, 150.0, 1.0)) > 0.999
    # At the paper's certainty temperature 4, a logit margin of 30 keeps under half the weight.
    assert 0.3 < float(prioritized_kl_weights(near_certain, 150.0, 4.0)) < 0.5
    c = np.asarray(certainty(logits, 4.0))
    np.testing.assert_allclose(
        prioritized_kl_weights(logits, 2.0, 4.0, -0.5), 1.5 * c**2 - 0.5, rtol=1e-5
    )
    betas = jnp.array([0.0, 1.0, 150.0])
    swept = jax.jit(jax.vmap(lambda b: prioritized_kl_weights(logits, b, 4.0)))(betas)
    np.testing.assert_allclose(swept[1], c, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# KL estimators


def distributions(scale, seed=0):
    rng = np.random.default_rng(seed)
    ref_logits = rng.standard_normal(6)
    logits = ref_logits + scale * rng.standard_normal(6)
    p = np.exp(logits) / np.exp(logits).sum()
    q = np.exp(ref_logits) / np.exp(ref_logits).sum()
    return logits, ref_logits, p, q


def test_kl_by_weight_bucket_against_numpy():
    rng = np.random.default_rng(4)
    logits = 3 * rng.standard_normal((4, 9, 7))
    ref = 4 * rng.standard_normal((4, 9, 7))
    mask = rng.random((4, 9)) < 0.8
    metrics = losses.kl_by_weight_bucket(jnp.asarray(logits), jnp.asarray(ref), jnp.asarray(mask),
                                         0.7)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    q = np.exp(ref) / np.exp(ref).sum(-1, keepdims=True)
    kl = np.sum(p * (np.log(p) - np.log(q)), -1)
    cold = np.exp(ref / 0.7) / np.exp(ref / 0.7).sum(-1, keepdims=True)
    weight = np.clip(1 + np.log(cold.max(-1)) / np.log(7), 0, 1) ** losses.BUCKET_BETA
    shares = 0.0
    for name, low, high in losses.KL_BUCKETS:
        inside = mask & (weight >= low) & (weight < high)
        assert inside.any(), name  # the draw fills every bucket
        np.testing.assert_allclose(metrics[f"kl_w_{name}"], kl[inside].mean(), rtol=1e-4)
        np.testing.assert_allclose(metrics[f"tokens_w_{name}"], inside.sum() / mask.sum())
        shares += float(metrics[f"tokens_w_{name}"])
    assert shares == pytest.approx(1.0)


def test_exact_kl_against_numpy():
    logits, ref_logits, p, q = distributions(1.0)
    expected = np.sum(p * np.log(p / q))
    assert float(exact_kl(jnp.asarray(logits), jnp.asarray(ref_logits))) == pytest.approx(
        expected, rel=1e-5
    )
    assert float(exact_kl(jnp.asarray(logits), jnp.asarray(logits))) == pytest.approx(0, abs=1e-6)
    assert float(kl_per_token(jnp.asarray(logits), jnp.asarray(ref_logits), 0, "exact")) == (
        pytest.approx(expected, rel=1e-5)
    )


def test_estimators_expectations_and_sample_means():
    logits, ref_logits, p, q = distributions(1.0)
    kl = np.sum(p * np.log(p / q))
    actions = jnp.arange(6)
    per_action = lambda kind: np.asarray(
        kl_per_token(jnp.tile(logits, (6, 1)), jnp.tile(ref_logits, (6, 1)), actions, kind)
    )
    # Exact expectations under a ~ p: k1 and k3 are unbiased.
    assert np.sum(p * per_action("k1")) == pytest.approx(kl, rel=1e-5)
    assert np.sum(p * per_action("k3")) == pytest.approx(kl, rel=1e-5)
    # Sample means over many a ~ p.
    samples = np.random.default_rng(1).choice(6, size=200_000, p=p)
    logp, ref_logp = jnp.asarray(np.log(p)[samples]), jnp.asarray(np.log(q)[samples])
    for kind in ("k1", "k3"):
        values = np.asarray(kl_estimate(logp, ref_logp, kind), np.float64)
        stderr = values.std() / math.sqrt(values.size)
        assert abs(values.mean() - kl) < 4 * stderr, kind
    # k2 is biased, but close to the KL when p is close to q.
    _, _, p_near, q_near = distributions(0.05)
    kl_near = np.sum(p_near * np.log(p_near / q_near))
    k2 = kl_estimate(jnp.asarray(np.log(p_near)), jnp.asarray(np.log(q_near)), "k2")
    assert np.sum(p_near * np.asarray(k2)) == pytest.approx(kl_near, rel=0.05)
    _, _, p_far, q_far = distributions(3.0)
    k2_far = kl_estimate(jnp.asarray(np.log(p_far)), jnp.asarray(np.log(q_far)), "k2")
    kl_far = np.sum(p_far * np.log(p_far / q_far))
    assert np.sum(p_far * np.asarray(k2_far)) != pytest.approx(kl_far, rel=0.05)


def test_k3_never_negative():
    rng = np.random.default_rng(2)
    logp, ref_logp = (jnp.asarray(rng.standard_normal(10_000) * 4, jnp.float32) for _ in "ab")
    assert np.all(np.asarray(kl_estimate(logp, ref_logp, "k3")) >= 0)
    assert np.all(np.asarray(kl_estimate(logp, logp, "k3")) == 0)


def test_unknown_kl_kind():
    with pytest.raises(ValueError, match="k1.*k2.*k3.*exact"):
        kl_per_token(jnp.zeros((2, V)), jnp.zeros((2, V)), jnp.zeros(2, int), "k4")
    with pytest.raises(ValueError, match="k1.*k2.*k3"):
        kl_estimate(jnp.zeros(2), jnp.zeros(2), "exact")


# ---------------------------------------------------------------------------------------------
# GAE


def gae_by_definition(rewards, values, mask, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l} to the episode's end, delta_t = r_t + gamma V_{t+1}
    - V_t with V = 0 after the last step."""
    advantages = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        steps = np.flatnonzero(mask[b])
        start, end = steps[0], steps[-1]
        deltas = [
            rewards[b, t] + gamma * (values[b, t + 1] if t < end else 0.0) - values[b, t]
            for t in range(start, end + 1)
        ]
        for t in range(start, end + 1):
            tail = deltas[t - start :]
            advantages[b, t] = sum((gamma * lam) ** k * d for k, d in enumerate(tail))
    return advantages, np.where(mask, advantages + values, 0.0)


def random_episodes(seed, batch=6, time=20):
    rng = np.random.default_rng(seed)
    mask = np.zeros((batch, time), bool)
    for b in range(batch):
        start = rng.integers(1, 6)
        end = time if b == 0 else rng.integers(start + 1, time)  # the first one is not padded
        mask[b, start:end] = True
    rewards = rng.standard_normal((batch, time)).astype(np.float32)
    values = rng.standard_normal((batch, time)).astype(np.float32)
    return rewards, values, mask


def test_gae_matches_definition():
    rewards, values, mask = random_episodes(0)
    assert mask[:, -1].any() and not mask[:, -1].all()  # some episodes padded, some not
    advantages, returns = jax.jit(gae)(rewards, values, mask, 0.9, 0.95)
    expected_adv, expected_ret = gae_by_definition(rewards, values, mask, 0.9, 0.95)
    np.testing.assert_allclose(advantages, expected_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns, expected_ret, rtol=1e-5, atol=1e-5)
    assert not np.any(np.asarray(advantages)[~mask])


def test_gae_undiscounted_returns_are_reward_to_go_and_gamma_traces():
    rewards, values, mask = random_episodes(1)
    _, returns = gae(rewards, values, mask, 1.0, 1.0)
    inside = np.where(mask, rewards, 0.0)
    to_go = np.flip(np.cumsum(np.flip(inside, -1), -1), -1)
    np.testing.assert_allclose(returns, np.where(mask, to_go, 0.0), rtol=1e-5, atol=1e-5)
    gammas = jnp.array([0.5, 1.0])
    swept = jax.vmap(lambda g: gae(rewards, values, mask, g, 0.9))(gammas)
    for i, g in enumerate([0.5, 1.0]):
        expected = gae_by_definition(rewards, values, mask, g, 0.9)
        np.testing.assert_allclose(swept[0][i], expected[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Configuration and value head


@pytest.mark.parametrize(
    "field,value",
    [
        ("algorithm", "sac"),
        ("kl_kind", "k4"),
        ("kl_placement", "advantage"),
        ("prioritized", 1),
    ],
)
def test_loss_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"LossConfig.{field}"):
        LossConfig(**{field: value})


def test_loss_hyper_defaults():
    assert LossHyper() == LossHyper(5.0, 150.0, 1.0, 0.0, 0.2, 0.1, 0.0005, 1.0, 1.0)
    assert LossHyper(**PAPER_TEMPERATURES) == LossHyper(
        certainty_temperature=4.0, policy_temperature=2.0)


def test_value_head_shapes_and_zero_init():
    head = ValueHead()
    hidden = jnp.ones((2, 5, CONFIG.d_model))
    params = head.init(jax.random.key(0), hidden)["params"]
    values = head.apply({"params": params}, hidden)
    assert values.shape == (2, 5) and values.dtype == jnp.float32
    assert not np.any(values)
    assert params["hidden_0"]["kernel"].shape == (CONFIG.d_model, 128)


def test_center_advantages_subtracts_the_mean_over_actions():
    advantages = jnp.array([[9.0, 1.0, 2.0, 9.0], [9.0, 3.0, 9.0, 9.0]])
    mask = jnp.array([[False, True, True, False], [False, True, False, False]])
    centered = center_advantages(advantages, mask)  # mean over actions: 2
    np.testing.assert_allclose(centered, [[0.0, -1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])


# ---------------------------------------------------------------------------------------------
# Group baselines


@pytest.mark.parametrize("baseline", ["grpo", "dr_grpo", "rloo"])
def test_group_advantages_match_numpy(baseline):
    rewards = np.random.default_rng(0).choice([-1.0, 1.0], size=12)
    group = 4
    got = np.asarray(losses.group_advantages(jnp.asarray(rewards), group, baseline))
    for start in range(0, 12, group):
        r = rewards[start:start + group]
        for i in range(group):
            others = np.delete(r, i)
            expected = {"grpo": (r[i] - r.mean()) / (np.std(r, ddof=1) + 1e-4),
                        "dr_grpo": r[i] - r.mean(),
                        "rloo": r[i] - others.mean()}[baseline]
            np.testing.assert_allclose(got[start + i], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="group baseline"):
        losses.group_advantages(jnp.asarray(rewards), group, "value")
