"""bfloat16 compute (`ModelConfig.dtype`, `RLConfig.dtype`) against float32: the pre-training
loss, the prioritized KL's weights and the RL loss of the shipped `mini-n3` model, each computed
by the float32 path as the independent reference.

The model is the shipped one, not a random tiny one, because the prioritized KL weight
w = certainty ** 150 spans [0, 1] only on a trained model's episodes (a random model's
certainty puts every w at 0); the mini model's forward passes take about 2 s each here.

Tolerances. bfloat16 keeps 8 significant bits: each matrix product's inputs are rounded by
up to 2^-9 of their value (the products accumulate in float32). Through 4 layers the logits
(standard deviation ~4) move by 0.012 on average and 0.35 at most on 4-digit RL episodes, the
log-probs of the episodes' tokens by 0.0008 on average (measured).
- Averages over the batch's tokens (the RL loss and its terms) cancel most of that: within 2%
  of float32 (measured: the weighted KL 0.9%, the loss 0.6%, the policy loss 0.4%, the rest
  0.25% or less). The gradients point the same way: cosine above 0.99 (measured 0.998).
- The pre-training cross-entropy of a trained model is small (0.05 nats per token on 4-digit
  streams) and made of per-token log-prob errors: within 0.002 nats per token (measured 0.0007).
- Per token, the prioritized KL weight w = c ** 150 turns a log-prob error d into about
  150 w (1 - p) d / log|V| (p the reference's top probability): measured on the 9,000 action
  tokens of 32 episodes, mean |dw| 0.0011, 99th percentile 0.024, max 0.11 (a token whose w is mid-range,
  where the rule is steepest); held below 0.003 (mean) and 0.05 (99th percentile).
What a run sees of this is in the curves of docs/throughput.md ("bfloat16").
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critkl import losses, supervised, weighting
from critkl.config import RLConfig
from critkl.loss_config import LossConfig, LossHyper
from critkl.model import GPT
from critkl.rl import shift_right
from critkl.runs.models import load_pretrained
from critkl.tasks import addition, layout

DTYPES = ("float32", "bfloat16")
LOSS_RTOL = 0.02  # averages over the batch's tokens (see the module docstring)
CROSS_ENTROPY_ATOL = 0.002  # nats per token (see the module docstring)
HYPER = LossHyper(kl_coef=0.5)


def cosine(a, b) -> float:
    """Cosine similarity of two pytrees of arrays, flattened."""
    a, b = (jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)]) for tree in (a, b))
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


@pytest.fixture(scope="module")
def model():
    pre_config, params = load_pretrained("mini-n3")
    return pre_config, params


@pytest.fixture(scope="module")
def episodes():
    """16 correct 4-digit episodes (the RL distribution of mini-n3), teacher-forced."""
    return addition.render(addition.sample_rl(jax.random.key(0), 16, 3, 1, 4))


@functools.partial(jax.jit, static_argnums=0)
def rl_loss(config, policy, reference, tokens, mask, advantages):
    """The trainer's quantities in `config`'s dtype: the reference's log-probs and the
    prioritized KL weights [B,T], then the fused loss of `policy` (the reference acted: the
    old log-probs are its own) and its gradient."""
    ref_logprobs = jax.nn.log_softmax(GPT(config).apply({"params": reference}, tokens)[0])
    weights = shift_right(weighting.prioritized_kl_weights(
        ref_logprobs, HYPER.beta, HYPER.certainty_temperature))
    old = jnp.pad(losses.token_logprobs(ref_logprobs[:, :-1], tokens[:, 1:]), ((0, 0), (1, 0)))
    batch = losses.RolloutBatch(tokens, mask, old, advantages, advantages, ref_logprobs, weights)

    def loss(policy):
        return losses.fused_loss(GPT(config).apply({"params": policy}, tokens)[0],
                                 jnp.zeros(tokens.shape), batch, HYPER, LossConfig())

    (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(policy)
    return weights, value, metrics, grads


@pytest.fixture(scope="module")
def rl_by_dtype(model, episodes):
    """rl_loss in float32 and bfloat16, with a policy a little away from the reference."""
    pre_config, reference = model
    noise = np.random.default_rng(1)
    policy = jax.tree.map(lambda x: x + 0.01 * noise.standard_normal(x.shape, np.float32),
                          reference)
    tokens = episodes.tokens
    mask = layout.span_mask(episodes.prompt_length, episodes.length, tokens.shape[1])
    advantages = jnp.where(mask, jax.random.normal(jax.random.key(2), tokens.shape), 0.0)
    return mask, {dtype: rl_loss(dataclasses.replace(pre_config.model_config, dtype=dtype),
                                 policy, reference, tokens, mask, advantages)
                  for dtype in DTYPES}


def test_prioritized_kl_weights_in_bfloat16(rl_by_dtype):
    mask, results = rl_by_dtype
    w32, w16 = (np.asarray(results[dtype][0])[np.asarray(mask)] for dtype in DTYPES)
    assert results["bfloat16"][0].dtype == jnp.float32
    assert np.mean((w32 > 0.05) & (w32 < 0.95)) > 0.05  # mid-range weights are compared
    difference = np.abs(w16 - w32)
    assert difference.mean() < 0.003
    assert np.quantile(difference, 0.99) < 0.05
    assert abs(w16.mean() - w32.mean()) < 0.01 * w32.mean()


def test_rl_loss_and_gradient_in_bfloat16(rl_by_dtype):
    _, results = rl_by_dtype
    (_, loss32, metrics32, grads32), (_, loss16, metrics16, grads16) = (
        results[dtype] for dtype in DTYPES)
    assert loss16.dtype == jnp.float32
    for name in ("policy_loss", "weighted_kl", "kl", "entropy", "weight", "certainty"):
        assert metrics16[name].dtype == jnp.float32
        np.testing.assert_allclose(metrics16[name], metrics32[name], rtol=LOSS_RTOL, err_msg=name)
    np.testing.assert_allclose(loss16, loss32, rtol=LOSS_RTOL)
    assert float(metrics32["weighted_kl"]) > 1e-4  # the policy is away from the reference
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
    assert cosine(grads16, grads32) > 0.99


# 20 s; the bfloat16 RL loss, KL weights and gradients stay in the default suite.
@pytest.mark.slow
def test_pretraining_loss_in_bfloat16(model):
    pre_config, params = model
    # Streams of problems up to 4 digits, one more than mini-n3 learned: a loss far from 0.
    config = dataclasses.replace(pre_config, max_digits=4, eval_extra_digits=0, batch_size=2)
    tokens, targets, _ = supervised.streams_batch(jax.random.key(3), config)
    results = {}
    for dtype in DTYPES:
        model_config = dataclasses.replace(pre_config.model_config, dtype=dtype)
        step = jax.jit(jax.value_and_grad(supervised.next_token_loss, has_aux=True),
                       static_argnums=1)
        results[dtype] = step(params, model_config, tokens, targets)
    ((loss32, accuracy32), grads32), ((loss16, accuracy16), grads16) = (
        results[dtype] for dtype in DTYPES)
    assert loss16.dtype == jnp.float32
    np.testing.assert_allclose(loss16, loss32, rtol=0, atol=CROSS_ENTROPY_ATOL)
    assert loss32 > 10 * CROSS_ENTROPY_ATOL
    np.testing.assert_allclose(accuracy16, accuracy32, atol=0.01)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
    assert cosine(grads16, grads32) > 0.99


def test_an_rl_run_computes_in_its_own_dtype(model):
    """RLConfig.dtype, not the pre-trained model's, sets the run's compute dtype (the program
    it reaches: tests/test_lowering.py); its validation names the field."""
    pre_config, _ = model
    bf16_model = dataclasses.replace(pre_config.model_config, dtype="bfloat16")
    assert RLConfig().run_model(bf16_model).dtype == "float32"
    assert RLConfig(dtype="bfloat16").run_model(pre_config.model_config).compute_dtype == jnp.bfloat16
    with pytest.raises(ValueError, match=r"RLConfig.dtype must be one of \('float32', 'bfloat16'\)"):
        RLConfig(dtype="float16")
    with pytest.raises(ValueError, match="RLConfig.attention"):
        RLConfig(attention="flash")
