"""Tests of critkl.weighting: each named weighting against a direct numpy formula on random
logits, its effect on the fused loss against an unfused numpy loss, the oracle's mask against
plain Python, and a sweep over rules' parameters against separate runs."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critkl import losses, rl, weighting
from critkl.config import RLConfig, RLHyper, model_preset
from critkl.loss_config import WEIGHTINGS, LossConfig, LossHyper
from critkl.model import init_params
from critkl.tasks import addition, decisions
from critkl.tasks.addition import Addition

B, T, V = 4, 23, 42
HYPER = LossHyper(certainty_temperature=1.3, policy_temperature=0.8, beta=3.0, intercept=-0.2,
                  clip_epsilon=0.2, wide_clip_epsilon=0.45, focus_share=0.2, focus_tokens=7.0)


def random_inputs(seed=0):
    """Random signal inputs with ragged action masks and a few causal-critical tokens."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((B, T), bool)
    for b, (start, end) in enumerate([(2, 23), (3, 10), (1, 17), (5, 20)]):
        mask[b, start:end] = True
    return weighting.SignalInputs(
        ref_logits=jnp.asarray(rng.standard_normal((B, T, V)) * 3, jnp.float32),
        policy_logits=jnp.asarray(rng.standard_normal((B, T, V)) * 3, jnp.float32),
        logprobs=jnp.asarray(np.where(mask, -rng.exponential(1.0, (B, T)), 0.0), jnp.float32),
        advantages=jnp.asarray(np.where(mask, rng.standard_normal((B, T)), 0.0), jnp.float32),
        critical=jnp.asarray(mask & (rng.random((B, T)) < 0.1)),
        mask=jnp.asarray(mask))


def np_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_confidence(signal, inputs, hyper):
    """Each signal written out directly in numpy (float64)."""
    mask = np.asarray(inputs.mask)
    if signal == "certainty":
        p = np_softmax(np.asarray(inputs.ref_logits) / hyper.certainty_temperature)
        return np.clip(1 + np.log(p.max(-1)) / np.log(V), 0, 1)
    if signal in ("reference_entropy", "policy_entropy"):
        logits, temperature = ((inputs.ref_logits, 1.0) if signal == "reference_entropy"
                               else (inputs.policy_logits, hyper.policy_temperature))
        p = np_softmax(np.asarray(logits) / temperature)
        return np.clip(1 - (-(p * np.log(p)).sum(-1)) / np.log(V), 0, 1)
    if signal == "policy_max_prob":
        return np_softmax(np.asarray(inputs.policy_logits) / hyper.policy_temperature).max(-1)
    if signal == "covariance":
        logp, adv = np.asarray(inputs.logprobs, np.float64), np.asarray(inputs.advantages, np.float64)
        return -(logp - logp[mask].mean()) * (adv - adv[mask].mean())
    if signal == "oracle":
        return np.where(np.asarray(inputs.critical), 0.0, 1.0)
    raise AssertionError(signal)


def np_shuffled(w, mask):
    """Plain Python: each row's masked weights moved from the positions in the order of the
    fixed random scores to the positions in order."""
    scores = np.asarray(jax.random.uniform(jax.random.key(weighting.SHUFFLE_KEY), w.shape))
    out = np.array(w, dtype=np.float64)
    for b in range(w.shape[0]):
        positions = [t for t in range(w.shape[1]) if mask[b, t]]
        in_random_order = sorted(positions, key=lambda t: scores[b, t])
        for target, source in zip(positions, in_random_order):
            out[b, target] = w[b, source]
    return out


def np_weight(rule, s, mask, hyper):
    """w of each rule: the lowest-confidence tokens (by a plain ranking) get 0."""
    if rule == "power":
        return (1 - hyper.intercept) * s ** hyper.beta + hyper.intercept
    if rule == "shuffled_power":
        return np_shuffled(np_weight("power", s, mask, hyper), mask)
    w = np.ones_like(s)
    groups = ([np.ones_like(mask)] if rule != "episode_quantile"
              else [np.arange(B)[:, None] == b for b in range(B)])
    for group in groups:
        inside = mask & group
        n = inside.sum()
        k = (int(np.ceil(hyper.focus_share * n)) if rule != "top_k"
             else min(int(np.ceil(hyper.focus_tokens)), n))
        if k == 0:
            continue
        threshold = np.sort(s[inside])[k - 1]
        w[inside & (s <= threshold)] = 0.0
    return w


def preset(name):
    fields, values = WEIGHTINGS[name]
    return LossConfig(**fields), HYPER.replace(**values)


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_each_preset_matches_a_direct_formula(name):
    config, hyper = preset(name)
    inputs = random_inputs()
    mask = np.asarray(inputs.mask)
    got = weighting.token_weights(config, inputs, hyper)
    if not config.prioritized:
        expected = np.ones((B, T))
    else:
        s = np_confidence(config.weight_signal, inputs, hyper)
        expected = np_weight(config.weight_rule, s, mask, hyper)
    np.testing.assert_allclose(np.where(mask, got, 0), np.where(mask, expected, 0),
                               rtol=1e-5, atol=1e-6)
    if config.weight_rule in ("quantile", "episode_quantile", "top_k"):
        assert 0 < (np.asarray(got)[mask] == 0).sum() < mask.sum()  # some singled out, not all


@pytest.mark.parametrize("signal", ["certainty", "reference_entropy", "policy_entropy",
                                    "policy_max_prob", "covariance", "oracle"])
@pytest.mark.parametrize("rule", ["power", "quantile", "episode_quantile", "top_k",
                                  "shuffled_power"])
def test_every_signal_and_rule_matches_numpy(signal, rule):
    if signal == "covariance" and rule in ("power", "shuffled_power"):
        with pytest.raises(ValueError, match=f"weight_rule='{rule}'"):
            LossConfig(weight_signal=signal, weight_rule=rule)
        return
    config = LossConfig(weight_signal=signal, weight_rule=rule)
    inputs = random_inputs(seed=1)
    mask = np.asarray(inputs.mask)
    got = np.asarray(weighting.token_weights(config, inputs, HYPER))
    expected = np_weight(rule, np_confidence(signal, inputs, HYPER), mask, HYPER)
    np.testing.assert_allclose(got[mask], expected[mask], rtol=1e-5, atol=1e-6)


def test_shuffled_weights_keep_each_episodes_weights_and_move_them():
    """The control of *where*: per episode the same weights (so the same mean KL weight), at
    other tokens; the positions outside the action mask keep theirs."""
    inputs = random_inputs(seed=2)
    mask = np.asarray(inputs.mask)
    config, hyper = preset("prioritized")
    hyper = hyper.replace(beta=1.0, intercept=0.0)  # distinct weights: a move is seen
    straight = np.asarray(weighting.token_weights(config, inputs, hyper))
    shuffled = np.asarray(weighting.token_weights(
        LossConfig(weight_rule="shuffled_power"), inputs, hyper))
    for b in range(B):
        np.testing.assert_allclose(np.sort(shuffled[b][mask[b]]), np.sort(straight[b][mask[b]]),
                                   rtol=1e-6)
        assert (shuffled[b][mask[b]] != straight[b][mask[b]]).mean() > 0.5
    np.testing.assert_array_equal(shuffled[~mask], straight[~mask])


def test_paper_case_is_the_prioritized_kl_weight():
    inputs = random_inputs(seed=2)
    got = weighting.token_weights(LossConfig(), inputs, HYPER)
    paper = weighting.prioritized_kl_weights(inputs.ref_logits, HYPER.beta,
                                             HYPER.certainty_temperature, HYPER.intercept)
    np.testing.assert_array_equal(got, paper)


def test_targets_act_on_the_terms_they_name():
    w = jnp.asarray(np.random.default_rng(3).random((B, T)), jnp.float32)
    cases = {("kl",): (w, 1, 0.2), ("kl_only",): (1 - w, 1, 0.2), ("pg",): (1, 1 - w, 0.2),
             ("pg_detach",): (1, w, 0.2), ("kl", "clip"): (w, 1, 0.2 + (1 - w) * 0.25)}
    for targets, (kl, policy, epsilon) in cases.items():
        got = weighting.target_weights(LossConfig(weight_targets=targets), w, HYPER)
        for name, value, expected in zip(("kl", "policy", "clip"), got, (kl, policy, epsilon)):
            np.testing.assert_allclose(value, np.broadcast_to(expected, (B, T)), rtol=1e-6,
                                       err_msg=f"{targets} {name}")
    off = weighting.target_weights(LossConfig(prioritized=False, weight_targets=("pg", "clip")),
                                   w, HYPER)
    assert all(np.all(np.asarray(x) == y) for x, y in zip(off, (1.0, 1.0, 0.2)))


@pytest.mark.parametrize("targets", [("kl",), ("pg",), ("kl", "clip"), ("kl_only",),
                                     ("pg_detach",)])
def test_fused_loss_applies_the_targets(targets):
    """fused_loss on logits against the PPO loss written out in numpy with per-token kl and
    policy weights and clip ranges."""
    rng = np.random.default_rng(4)
    inputs = random_inputs(seed=4)
    mask = np.asarray(inputs.mask)
    tokens = rng.integers(0, V, (B, T))
    logits = np.asarray(rng.standard_normal((B, T, V)) * 2, np.float32)
    ref_logp = np.log(np_softmax(np.asarray(inputs.ref_logits)))
    weights = rng.random((B, T)).astype(np.float32)
    advantages = np.asarray(inputs.advantages)
    scaled = np.log(np_softmax(logits / HYPER.policy_temperature))
    acting = np.take_along_axis(scaled[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    old = np.pad(acting + 0.4 * rng.standard_normal(acting.shape), ((0, 0), (1, 0)))
    batch = losses.RolloutBatch(
        jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(np.where(mask, old, 0), jnp.float32),
        jnp.asarray(advantages), jnp.zeros((B, T)), jnp.asarray(ref_logp, jnp.float32),
        jnp.asarray(weights))
    config = LossConfig(kl_kind="k2", weight_targets=targets)
    hyper = HYPER.replace(value_coef=0.0, entropy_coef=0.0, kl_coef=0.7)
    _, metrics = losses.fused_loss(jnp.asarray(logits), jnp.zeros((B, T)), batch, hyper, config)

    m, w = mask[:, 1:], weights[:, 1:]
    kl_w = w if "kl" in targets else 1 - w if "kl_only" in targets else np.ones_like(w)
    pg_w = 1 - w if "pg" in targets else w if "pg_detach" in targets else np.ones_like(w)
    eps = 0.2 + (1 - w) * 0.25 if "clip" in targets else np.full_like(w, 0.2)
    logp = np.take_along_axis(scaled[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    ratio = np.exp(logp - old[:, 1:])
    adv = advantages[:, 1:]
    surrogate = np.minimum(ratio * adv, np.clip(ratio, 1 - eps, 1 + eps) * adv)
    policy_loss = -(pg_w * surrogate)[m].mean()
    logp1 = np.log(np_softmax(logits[:, :-1]))
    diff = np.take_along_axis(logp1 - ref_logp[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    weighted_kl = (kl_w * 0.5 * diff ** 2)[m].mean()
    np.testing.assert_allclose(metrics["policy_loss"], policy_loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["weighted_kl"], weighted_kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"], policy_loss + 0.7 * weighted_kl, rtol=1e-4,
                               atol=1e-6)


def test_rule_parameters_vmap():
    inputs = random_inputs(seed=5)
    config, _ = preset("archer")
    shares = jnp.array([0.1, 0.3, 0.5])
    swept = jax.vmap(lambda share: weighting.token_weights(
        config, inputs, HYPER.replace(focus_share=share)))(shares)
    for share, row in zip(shares, swept):
        np.testing.assert_array_equal(
            row, weighting.token_weights(config, inputs, HYPER.replace(focus_share=float(share))))
    singled_out = [(np.asarray(row)[np.asarray(inputs.mask)] == 0).sum() for row in swept]
    assert singled_out[0] < singled_out[1] < singled_out[2]


def test_causal_critical_mask_matches_plain_python():
    operands = addition.sample_identical(jax.random.key(0), 6, 2, 2)
    reference = addition.render(operands)
    keys = ((1, "operand", "a", 2), (2, "operand", "b", 0), (1, "sum", "", 0))
    width = reference.tokens.shape[1] + 5
    tokens = np.pad(np.asarray(reference.tokens), ((0, 0), (0, 5)))
    tokens[1, 30] = (tokens[1, 30] + 1) % V   # an early slip: later keys are off the path
    task = Addition(2, 0)
    got = np.asarray(decisions.causal_critical_mask(task, jnp.asarray(tokens), reference, keys))
    assert got.shape == (6, width)
    found = decisions.decision_keys(task, reference)
    ref_tokens = np.asarray(reference.tokens)
    expected = np.zeros((6, width), bool)
    for b in range(6):
        for t, key in found[b].items():
            prefix_right = all(tokens[b, i] == ref_tokens[b, i] for i in range(t))
            expected[b, t] = key in keys and prefix_right
    np.testing.assert_array_equal(got, expected)
    assert expected.sum() > 0 and expected[1].sum() < expected[0].sum()


def test_invalid_weightings_are_refused():
    for fields, message in [
        (dict(weight_signal="entropy"), "weight_signal"),
        (dict(weight_targets=("kl", "kl_only")), "contradict"),
        (dict(weight_targets=("pg", "pg_detach")), "contradict"),
        (dict(weight_targets=()), "weight_targets"),
        (dict(weight_targets=("kl", "kl")), "weight_targets"),
        (dict(weight_targets="kl"), "weight_targets"),
        (dict(kl_placement="reward", weight_targets=("kl", "clip")), "kl_placement"),
    ]:
        with pytest.raises(ValueError, match=message):
            LossConfig(**fields)
    with pytest.raises(ValueError, match="causal_keys"):
        RLConfig(loss=LossConfig(weight_signal="oracle"))


TINY = model_preset("tiny")
QUICK = RLConfig(n=1, extra_digits=1, episodes=4, iterations=2, ppo_epochs=1, minibatches=2,
                 eval_every=1, eval_episodes=4, value_hidden_sizes=(8,))


# About a minute of compiling (three programs); the vmapped-sweep guarantee itself is in
# the default suite (tests/test_finetune.py).
@pytest.mark.slow
def test_sweep_over_a_rules_parameters_equals_separate_runs():
    """Archer's focus share and wide clip, with an RLOO group baseline (2 episodes per
    problem), swept as one vmapped program against separate runs."""
    fields, _ = WEIGHTINGS["archer"]
    config = dataclasses.replace(QUICK, group_size=2,
                                 loss=LossConfig(baseline="rloo", **fields))
    params = init_params(jax.random.key(0), TINY)
    train = rl.make_train(config, TINY).train
    hypers = [RLHyper(learning_rate=1e-3, loss=LossHyper(kl_coef=1.0, focus_share=share,
                                                        wide_clip_epsilon=wide))
              for share, wide in ((0.1, 0.3), (0.5, 0.6))]
    rngs = jnp.stack([jax.random.key(7)] * 2)
    swept, _, swept_metrics = jax.jit(jax.vmap(train, in_axes=(0, 0, None)))(
        rngs, rl.stack_hypers(hypers), params)
    single = jax.jit(train)
    for index, hyper in enumerate(hypers):
        state, _, metrics = single(jax.random.key(7), jax.tree.map(jnp.float32, hyper), params)
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[index], swept.policy),
                                    state.policy, atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(swept_metrics[0]["loss/weight"][index],
                                   metrics[0]["loss/weight"], rtol=1e-5)
    weights = swept_metrics[0]["loss/weight"][:, -1]
    assert weights[0] > weights[1]  # a larger share frees the KL on more tokens


def test_a_collect_draws_group_size_episodes_per_problem():
    config = RLConfig(episodes=12, minibatches=2, group_size=3)
    operands = rl.collect_problems(jax.random.key(0), config)
    a, b = np.asarray(operands.a), np.asarray(operands.b)
    assert a.shape[0] == 12
    for start in range(0, 12, 3):
        assert (a[start:start + 3] == a[start]).all() and (b[start:start + 3] == b[start]).all()
    assert len({a[i].tobytes() + b[i].tobytes() for i in range(0, 12, 3)}) == 4


def test_group_baselines_need_groups():
    with pytest.raises(ValueError, match="group_size >= 2"):
        RLConfig(loss=LossConfig(baseline="grpo"))
    with pytest.raises(ValueError, match="multiple of group_size"):
        RLConfig(episodes=128, group_size=3)
    with pytest.raises(ValueError, match="baseline='value'"):
        LossConfig(baseline="rloo", kl_placement="reward")
