"""Tests of critkl.model: forward shapes, KV-cache decoding, tied embeddings, configs."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critkl.config import model_preset, ModelConfig, PRESETS
from critkl.model import GPT, INIT_STD, QUERY_BLOCK, attention, init_cache, init_params

CONFIG = model_preset("tiny")


def noisy_params(config, seed=0, scale=0.3):
    """Random parameters far from initialisation, so attention and logits are not flat."""
    noise = np.random.default_rng(seed)
    params = init_params(jax.random.key(seed), config)
    return jax.tree.map(lambda x: x + scale * noise.standard_normal(x.shape, np.float32), params)


@functools.partial(jax.jit, static_argnums=0)
def forward(config, params, tokens, positions=None):
    """Jitted full forward (eager flax calls spend seconds compiling op by op)."""
    return GPT(config).apply({"params": params}, tokens, positions)


@pytest.fixture(scope="module")
def params():
    return noisy_params(CONFIG)


def test_forward_shapes_and_dtypes(params):
    tokens = jnp.zeros((3, 7), jnp.int32)
    logits, hidden = forward(CONFIG, params, tokens)
    assert logits.shape == (3, 7, CONFIG.vocab_size) and logits.dtype == jnp.float32
    assert hidden.shape == (3, 7, CONFIG.d_model) and hidden.dtype == jnp.float32


def test_default_positions_are_arange(params):
    tokens = jax.random.randint(jax.random.key(2), (2, 6), 2, CONFIG.vocab_size)
    default, _ = forward(CONFIG, params, tokens)
    explicit, _ = forward(CONFIG, params, tokens, jnp.tile(jnp.arange(6), (2, 1)))
    shifted, _ = forward(CONFIG, params, tokens, jnp.tile(jnp.arange(6) + 5, (2, 1)))
    np.testing.assert_allclose(default, explicit, atol=1e-6)
    assert not np.allclose(default, shifted, atol=1e-3)


def test_forward_is_causal(params):
    tokens = jax.random.randint(jax.random.key(3), (2, 8), 2, CONFIG.vocab_size)
    changed = tokens.at[:, 5:].set(7)
    a, _ = forward(CONFIG, params, tokens)
    b, _ = forward(CONFIG, params, changed)
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)


@pytest.mark.parametrize("prefill_length, cache_length, attention",
                         [(1, 12, "critkl"), (5, None, "critkl"), (5, 12, "xla")])
def test_cached_decoding_matches_full_forward(params, prefill_length, cache_length, attention):
    """Prefill and decode steps over a cache (in `attention`) against critkl's full forward."""
    model = GPT(dataclasses.replace(CONFIG, attention=attention))
    tokens = jax.random.randint(jax.random.key(4), (2, 12), 0, CONFIG.vocab_size)
    full_logits, full_hidden = forward(CONFIG, params, tokens)

    prefill = jax.jit(functools.partial(model.apply, method=GPT.prefill))
    step = jax.jit(functools.partial(model.apply, method=GPT.decode_step))
    cache = init_cache(CONFIG, batch=2, length=cache_length)
    logits, hidden, cache = prefill({"params": params}, tokens[:, :prefill_length], cache)
    all_logits, all_hidden = [logits], [hidden]
    for t in range(prefill_length, tokens.shape[1]):
        logits, hidden, cache = step({"params": params}, tokens[:, t], jnp.int32(t), cache)
        all_logits.append(logits[:, None])
        all_hidden.append(hidden[:, None])
    np.testing.assert_allclose(jnp.concatenate(all_logits, 1), full_logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(jnp.concatenate(all_hidden, 1), full_hidden, atol=1e-5, rtol=0)
    assert float(jnp.std(full_logits)) > 0.5  # the comparison is not between near-zeros


def test_cache_layout():
    cache = init_cache(CONFIG, batch=3, length=10)
    assert len(cache.keys) == len(cache.values) == CONFIG.num_layers
    assert cache.keys[0].shape == (3, CONFIG.num_heads, 10, CONFIG.head_dim)
    assert init_cache(CONFIG, batch=1).length == CONFIG.context_length
    with pytest.raises(ValueError, match="context_length"):
        init_cache(CONFIG, batch=1, length=CONFIG.context_length + 1)


def test_tied_output_embedding(params):
    shapes = [x.shape for x in jax.tree.leaves(params)]
    vocab_matrices = [s for s in shapes if CONFIG.vocab_size in s]
    assert vocab_matrices == [(CONFIG.vocab_size, CONFIG.d_model)]  # only the token embedding
    tokens = jnp.array([[3, 4, 5]], jnp.int32)
    logits, hidden = forward(CONFIG, params, tokens)
    expected = hidden @ params["token_embedding"]["embedding"].T
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_gpt2_initialisation():
    params = init_params(jax.random.key(0), CONFIG)
    block = params["blocks_0"]
    residual_std = INIT_STD / math.sqrt(2 * CONFIG.num_layers)
    assert np.std(params["token_embedding"]["embedding"]) == pytest.approx(INIT_STD, rel=0.1)
    assert np.std(block["attention"]["qkv"]["kernel"]) == pytest.approx(INIT_STD, rel=0.1)
    assert np.std(block["attention"]["out"]["kernel"]) == pytest.approx(residual_std, rel=0.1)
    assert np.std(block["mlp_out"]["kernel"]) == pytest.approx(residual_std, rel=0.1)
    assert not np.any(block["mlp_in"]["bias"])
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_bfloat16_compute_keeps_float32_params_and_outputs(params):
    config = dataclasses.replace(CONFIG, dtype="bfloat16")
    shapes = jax.eval_shape(init_params, jax.random.key(0), config)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))
    logits, hidden = forward(config, params, jnp.ones((1, 4), jnp.int32))
    assert logits.dtype == hidden.dtype == jnp.float32
    assert init_cache(config, batch=1, length=4).keys[0].dtype == jnp.bfloat16


def test_sequence_longer_than_context_is_rejected(params):
    tokens = jnp.ones((1, CONFIG.context_length + 1), jnp.int32)
    with pytest.raises(ValueError, match="context_length"):
        forward(CONFIG, params, tokens)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"d_model": 30, "num_heads": 4}, "d_model"),
        ({"dtype": "float16"}, "dtype"),
        ({"num_layers": 0}, "num_layers"),
        ({"d_ff": -1}, "d_ff"),
        ({"context_length": 2.5}, "context_length"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"attention": "flash"}, "attention must be one of \\('critkl', 'xla', 'cudnn'\\)"),
        ({"attention": "cudnn"}, "attention='cudnn' needs ModelConfig.dtype='bfloat16'"),
    ],
)
def test_config_validation_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(CONFIG, **changes)


def test_dtype_error_lists_allowed_values():
    with pytest.raises(ValueError, match="bfloat16"):
        dataclasses.replace(CONFIG, dtype="float64")


def test_presets():
    assert set(PRESETS) == {"tiny", "mini", "mini-long", "paper"}
    paper = model_preset("paper")
    assert (paper.num_layers, paper.d_model, paper.num_heads, paper.d_ff) == (12, 768, 12, 3072)
    assert paper.context_length == 1664
    assert model_preset("mini") == ModelConfig(
        num_layers=4, num_heads=4, d_model=128, d_ff=512, context_length=512
    )


def test_unknown_preset_lists_allowed_names():
    with pytest.raises(ValueError, match="huge") as error:
        model_preset("huge")
    assert all(name in str(error.value) for name in PRESETS)


def test_blocked_causal_attention_matches_cached_path(params):
    """Past QUERY_BLOCK positions the full forward attends in blocks of queries, each over
    the keys up to its end; prefill runs the same tokens through one unblocked attention
    over a cache. Both must agree at every position, across block boundaries."""
    length = 2 * QUERY_BLOCK + 37  # three blocks, the last one partial
    assert length <= CONFIG.context_length
    tokens = jax.random.randint(jax.random.key(8), (2, length), 0, CONFIG.vocab_size)
    logits, hidden = forward(CONFIG, params, tokens)
    prefill = jax.jit(functools.partial(GPT(CONFIG).apply, method=GPT.prefill))
    cached_logits, cached_hidden, _ = prefill({"params": params}, tokens,
                                              init_cache(CONFIG, batch=2, length=length))
    np.testing.assert_allclose(logits, cached_logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(hidden, cached_hidden, atol=1e-5, rtol=0)
    assert float(jnp.std(logits)) > 0.5


def test_attention_equals_softmax_then_values_with_its_gradients():
    """The model's attention (normalised after the product with the values) against numpy's
    softmax-then-product, and its gradients against autodiff of jax.nn.softmax's version."""
    from critkl.model import _attend

    q, k, v = (jax.random.normal(jax.random.key(i), (2, 3, 7, 4)) * 3 for i in range(3))
    mask = np.tril(np.ones((7, 7), bool))
    scores = np.einsum("bhtd,bhsd->bhts", q, k)
    scores = np.where(mask, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    expected = np.einsum("bhts,bhsd->bhtd", weights / weights.sum(-1, keepdims=True), v)
    np.testing.assert_allclose(_attend(q, k, v, mask, jnp.float32), expected, atol=1e-5, rtol=1e-5)

    def plain(q, k, v):
        weights = jax.nn.softmax(jnp.where(mask, jnp.einsum("bhtd,bhsd->bhts", q, k), -1e30))
        return jnp.einsum("bhts,bhsd->bhtd", weights, v)

    cotangent = jax.random.normal(jax.random.key(9), q.shape)
    grads = jax.grad(lambda *a: jnp.sum(_attend(*a, mask, jnp.float32) * cotangent),
                     argnums=(0, 1, 2))(q, k, v)
    expected_grads = jax.grad(lambda *a: jnp.sum(plain(*a) * cotangent), argnums=(0, 1, 2))(q, k, v)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("length", [12, QUERY_BLOCK + 37])
def test_dot_product_attention_equals_critkl_attention_with_gradients(params, length):
    """The full forward through jax.nn.dot_product_attention (implementation "xla", the one a
    CPU runs) against critkl's own attention (in blocks of queries past QUERY_BLOCK): logits,
    hidden states and the parameters' gradients of a loss of both, in float32."""
    tokens = jax.random.randint(jax.random.key(10), (2, length), 0, CONFIG.vocab_size)
    weights = jax.random.normal(jax.random.key(11), (2, length, CONFIG.vocab_size))

    @functools.partial(jax.jit, static_argnums=0)
    def outputs_and_gradients(config, params):
        def loss(params):
            logits, hidden = GPT(config).apply({"params": params}, tokens)
            return jnp.sum(jax.nn.log_softmax(logits) * weights) + jnp.sum(hidden ** 2), logits
        return jax.grad(loss, has_aux=True)(params)

    grads, logits = outputs_and_gradients(CONFIG, params)
    xla_grads, xla_logits = outputs_and_gradients(
        dataclasses.replace(CONFIG, attention="xla"), params)
    np.testing.assert_allclose(xla_logits, logits, atol=1e-5, rtol=0)
    assert float(jnp.std(logits)) > 0.5
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        xla_grad = functools.reduce(lambda tree, key: tree[key.key], path, xla_grads)
        scale = float(jnp.abs(grad).max())
        assert scale > 0, path
        np.testing.assert_allclose(xla_grad, grad, atol=1e-5 * scale, rtol=0, err_msg=str(path))


def test_attention_with_a_mask_over_a_cache():
    """One query block over a longer cache with a mask (as a decode step attends): the xla
    implementation equals critkl's, masked keys ignored by both."""
    q = jax.random.normal(jax.random.key(12), (2, CONFIG.num_heads, 3, CONFIG.head_dim))
    k, v = (jax.random.normal(jax.random.key(i), (2, CONFIG.num_heads, 9, CONFIG.head_dim))
            for i in (13, 14))
    mask = jnp.arange(3)[:, None] + 4 >= jnp.arange(9)[None, :]  # queries at positions 4..6
    ours = attention(q, k, v, mask, CONFIG, causal=False)
    xla = attention(q, k, v, mask, dataclasses.replace(CONFIG, attention="xla"), causal=False)
    np.testing.assert_allclose(xla, ours, atol=1e-5, rtol=0)
    changed = attention(q, k, v.at[:, :, 7:].set(100.0), mask,
                        dataclasses.replace(CONFIG, attention="xla"), causal=False)
    np.testing.assert_allclose(changed, xla, atol=1e-6, rtol=0)  # keys 7, 8 masked for all
