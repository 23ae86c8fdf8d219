"""Tests of critkl.sampling.generate against a full-forward reference."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critkl.config import model_preset
from critkl.model import GPT, init_params
from critkl.sampling import cache_windows, choose_tokens, decode_groups, default_stop, generate
from critkl.tasks.addition.tokenizer import EOS_ID, PAD_ID

CONFIG = model_preset("tiny")
MAX_LENGTH = 16
# Right-padded prompts of lengths 3, 1 and 6.
PROMPTS = jnp.array(
    [[5, 6, 7, 0, 0, 0], [9, 0, 0, 0, 0, 0], [4, 8, 15, 16, 23, 41]], jnp.int32
)
PROMPT_LENGTHS = jnp.array([3, 1, 6], jnp.int32)


def make_params():
    """Random parameters far from initialisation, with PAD and EOS made unlikely so that the
    random model writes long sequences."""
    noise = np.random.default_rng(0)
    params = init_params(jax.random.key(0), CONFIG)
    params = jax.tree.map(lambda x: x + 0.3 * noise.standard_normal(x.shape, np.float32), params)
    embedding = params["token_embedding"]["embedding"]
    params["token_embedding"]["embedding"] = embedding.at[jnp.array([PAD_ID, EOS_ID])].set(0.0)
    return params


@pytest.fixture(scope="module")
def params():
    return make_params()


@jax.jit
def full_logits(params, tokens):
    """Full (uncached) forward: tokens [B,M] -> logits [B,M,V]."""
    return GPT(CONFIG).apply({"params": params}, tokens)[0]


def never_stop(stop_state, token):
    return stop_state, jnp.zeros(token.shape, bool)


def make_slash_stop(slash_id, newline_id):
    """The addition environment's rule: ends at the second newline after the first slash, or
    on EOS/PAD. State: 0 before the slash, then 1 + number of newlines seen after it."""

    def stop(state, token):
        state = jnp.where((state == 0) & (token == slash_id), 1, state)
        state = jnp.where((state > 0) & (token == newline_id), state + 1, state)
        return state, (state == 3) | (token == EOS_ID) | (token == PAD_ID)

    return stop


def reference_stop_position(tokens, start, slash_id, newline_id):
    """Python version of make_slash_stop: index of the ending token in tokens[start:], or None."""
    state = 0
    for t in range(start, len(tokens)):
        token = tokens[t]
        if token in (EOS_ID, PAD_ID):
            return t
        if state == 0 and token == slash_id:
            state = 1
        elif state > 0 and token == newline_id:
            state += 1
            if state == 3:
                return t
    return None


def test_greedy_matches_reference_loop(params):
    gen = generate(
        params, CONFIG, PROMPTS, PROMPT_LENGTHS, jax.random.key(0),
        max_length=MAX_LENGTH, temperature=0.0, stop_fn=never_stop,
    )
    # Reference: grow every sequence one argmax token at a time with the full forward (the
    # buffer's trailing PAD cannot influence earlier positions: attention is causal).
    tokens = np.zeros((3, MAX_LENGTH), np.int32)
    tokens[:, : PROMPTS.shape[1]] = PROMPTS
    logprobs = np.zeros((3, MAX_LENGTH), np.float32)
    for b, length in enumerate(PROMPT_LENGTHS.tolist()):
        tokens[b, length:] = PAD_ID
        for t in range(length, MAX_LENGTH):
            logits = full_logits(params, jnp.asarray(tokens[b : b + 1]))[0, t - 1]
            tokens[b, t] = int(jnp.argmax(logits))
            logprobs[b, t] = jax.nn.log_softmax(logits)[tokens[b, t]]
    np.testing.assert_array_equal(gen.tokens, tokens)
    assert np.all(np.isfinite(logprobs))
    np.testing.assert_allclose(gen.logprobs, logprobs, atol=1e-5)
    np.testing.assert_array_equal(gen.lengths, [MAX_LENGTH] * 3)
    np.testing.assert_array_equal(gen.done, [False] * 3)
    assert len(set(tokens[0, 3:].tolist())) > 1  # the random model does not repeat one token


def test_sampled_logprobs_match_full_forward(params):
    temperature = 1.5
    gen = generate(
        params, CONFIG, PROMPTS, PROMPT_LENGTHS, jax.random.key(1),
        max_length=MAX_LENGTH, temperature=temperature, stop_fn=never_stop,
    )
    in_prompt = jnp.arange(PROMPTS.shape[1])[None, :] < PROMPT_LENGTHS[:, None]
    np.testing.assert_array_equal(gen.tokens[:, : PROMPTS.shape[1]][in_prompt], PROMPTS[in_prompt])
    logp = jax.nn.log_softmax(full_logits(params, gen.tokens) / temperature)  # [B,M,V]
    expected = jnp.take_along_axis(logp[:, :-1], gen.tokens[:, 1:, None], axis=-1)[..., 0]
    generated = jnp.arange(1, MAX_LENGTH)[None, :] >= PROMPT_LENGTHS[:, None]
    expected = jnp.where(generated, expected, 0.0)
    assert np.all(np.isfinite(expected))
    np.testing.assert_allclose(gen.logprobs[:, 1:], expected, atol=1e-5)
    np.testing.assert_array_equal(gen.logprobs[:, 0], 0.0)
    greedy = jnp.argmax(logp[:, :-1], axis=-1)
    assert np.any(np.asarray(generated & (gen.tokens[:, 1:] != greedy)))  # it did sample


def test_choose_tokens_follows_softmax_at_temperature():
    logits = jnp.tile(jnp.array([[2.0, 1.0, 0.0, -1.0]]), (20000, 1))
    tokens, logprobs = choose_tokens(jax.random.split(jax.random.key(0), len(logits)), logits, 2.0)
    probs = jax.nn.softmax(logits[0] / 2.0)
    frequencies = np.bincount(np.asarray(tokens), minlength=4) / len(tokens)
    np.testing.assert_allclose(frequencies, probs, atol=0.015)
    np.testing.assert_allclose(logprobs, jnp.log(probs)[tokens], atol=1e-6)


def test_stop_fn_ends_sequences(params):
    free = generate(
        params, CONFIG, PROMPTS, PROMPT_LENGTHS, jax.random.key(3),
        max_length=MAX_LENGTH, temperature=2.0, stop_fn=never_stop,
    )
    # Play the slash rule with two tokens that the free run wrote often.
    sampled = np.concatenate([free.tokens[b, n:] for b, n in enumerate(PROMPT_LENGTHS.tolist())])
    slash_id, newline_id = np.argsort(np.bincount(sampled))[-2:].tolist()
    stop = make_slash_stop(slash_id, newline_id)
    gen = generate(
        params, CONFIG, PROMPTS, PROMPT_LENGTHS, jax.random.key(3),
        max_length=MAX_LENGTH, temperature=2.0, stop_fn=stop,
    )
    stopped = 0
    for b, start in enumerate(PROMPT_LENGTHS.tolist()):
        free_tokens = np.asarray(free.tokens[b]).tolist()
        end = reference_stop_position(free_tokens, start, slash_id, newline_id)
        length = MAX_LENGTH if end is None else end + 1
        stopped += end is not None
        assert gen.lengths[b] == length and gen.done[b] == (end is not None)
        # Same rng, so the same tokens up to the end, then PAD with log-prob 0.
        np.testing.assert_array_equal(gen.tokens[b, :length], free.tokens[b, :length])
        np.testing.assert_allclose(gen.logprobs[b, :length], free.logprobs[b, :length], atol=1e-6)
        np.testing.assert_array_equal(gen.tokens[b, length:], PAD_ID)
        np.testing.assert_array_equal(gen.logprobs[b, length:], 0.0)
    assert stopped >= 1


def test_default_stop_ends_on_eos_and_pad():
    state = jnp.zeros(4, jnp.int32)
    _, ended = default_stop(state, jnp.array([EOS_ID, PAD_ID, 5, 17], jnp.int32))
    np.testing.assert_array_equal(ended, [True, True, False, False])


def test_generation_ending_on_eos(params):
    # A constant final hidden state aligned with EOS's embedding: EOS is always most likely,
    # so every sequence ends on the token right after its prompt.
    embedding = params["token_embedding"]["embedding"]
    eos_params = {
        **params,
        "final_norm": {"scale": jnp.zeros(CONFIG.d_model), "bias": jnp.ones(CONFIG.d_model)},
        "token_embedding": {"embedding": embedding.at[EOS_ID].set(1.0)},
    }
    gen = generate(
        eos_params, CONFIG, PROMPTS, PROMPT_LENGTHS, jax.random.key(3),
        max_length=MAX_LENGTH, temperature=1.0,
    )
    np.testing.assert_array_equal(gen.lengths, PROMPT_LENGTHS + 1)
    np.testing.assert_array_equal(gen.done, True)
    for b, length in enumerate(PROMPT_LENGTHS.tolist()):
        assert gen.tokens[b, length] == EOS_ID
        np.testing.assert_array_equal(gen.tokens[b, length + 1 :], PAD_ID)
        np.testing.assert_array_equal(gen.logprobs[b, length + 1 :], 0.0)


def test_jit_and_eager_agree(params):
    args = (params, CONFIG, PROMPTS, PROMPT_LENGTHS, jax.random.key(4))
    kwargs = dict(max_length=MAX_LENGTH, temperature=1.0, stop_fn=never_stop)
    jitted = generate(*args, **kwargs)
    eager = generate.__wrapped__(*args, **kwargs)  # generate without its jax.jit decorator
    np.testing.assert_array_equal(eager.tokens, jitted.tokens)
    np.testing.assert_allclose(eager.logprobs, jitted.logprobs, atol=1e-5)
    np.testing.assert_array_equal(eager.lengths, jitted.lengths)


def test_vmap_over_rng_params_and_temperature(params):
    run = functools.partial(
        generate, config=CONFIG, prompts=PROMPTS, prompt_lengths=PROMPT_LENGTHS,
        max_length=MAX_LENGTH, stop_fn=never_stop,
    )
    rngs = jax.random.split(jax.random.key(5), 2)
    param_sets = [params, jax.tree.map(lambda x: 0.8 * x, params)]
    temperatures = jnp.array([0.0, 1.0])
    batched = jax.jit(jax.vmap(lambda p, r, t: run(p, rng=r, temperature=t)))(
        jax.tree.map(lambda *xs: jnp.stack(xs), *param_sets), rngs, temperatures
    )
    assert batched.tokens.shape == (2, 3, MAX_LENGTH)
    for i in range(2):
        single = run(param_sets[i], rng=rngs[i], temperature=float(temperatures[i]))
        np.testing.assert_array_equal(batched.tokens[i], single.tokens)
        np.testing.assert_allclose(batched.logprobs[i], single.logprobs, atol=1e-5)
        np.testing.assert_array_equal(batched.lengths[i], single.lengths)


def test_max_length_beyond_context_is_rejected(params):
    with pytest.raises(ValueError, match="context_length"):
        generate(
            params, CONFIG, PROMPTS, PROMPT_LENGTHS, jax.random.key(0),
            max_length=CONFIG.context_length + 1, temperature=1.0,
        )


def stop_on_multiple_of_seven(stop_state, token):
    """Ends a sequence at a token id divisible by 7: sequences end at different lengths."""
    return stop_state, token % 7 == 0


@pytest.mark.parametrize("runs", [1, 3])
def test_vmap_with_early_stops_and_batched_prompts_matches_each_run(params, runs):
    """Each run has its own prompts, prompt lengths, key and params; runs stop at different
    steps, so the vmapped loop goes on for finished runs (which must write nothing)."""
    run = functools.partial(generate, config=CONFIG, max_length=MAX_LENGTH, temperature=1.5,
                            stop_fn=stop_on_multiple_of_seven)
    param_sets = [jax.tree.map(lambda x: (1.0 - 0.1 * i) * x, params) for i in range(runs)]
    prompts = jnp.stack([jnp.roll(PROMPTS, i, axis=0) for i in range(runs)])
    lengths = jnp.stack([jnp.roll(PROMPT_LENGTHS, i) for i in range(runs)])
    rngs = jax.random.split(jax.random.key(6), runs)
    batched = jax.jit(jax.vmap(lambda p, x, n, r: run(p, prompts=x, prompt_lengths=n, rng=r)))(
        jax.tree.map(lambda *xs: jnp.stack(xs), *param_sets), prompts, lengths, rngs)
    ends = set()
    for i in range(runs):
        single = run(param_sets[i], prompts=prompts[i], prompt_lengths=lengths[i], rng=rngs[i])
        np.testing.assert_array_equal(batched.tokens[i], single.tokens)
        np.testing.assert_allclose(batched.logprobs[i], single.logprobs, atol=1e-5)
        np.testing.assert_array_equal(batched.lengths[i], single.lengths)
        np.testing.assert_array_equal(batched.done[i], single.done)
        ends.update(np.asarray(single.lengths).tolist())
    assert len(ends) > 1  # the runs' sequences really ended at different steps


def _cache_copies(fn, *args) -> int:
    """Copy operations on key/value-cache-shaped buffers inside the while loops (the decode
    loops, run once per token) of fn's compiled program."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    computations = {}  # name -> lines of each computation of the HLO module
    for block in text.split("\n\n"):
        header = re.match(r"\s*(?:ENTRY )?%?([\w.\-]+)", block)
        if header:
            computations[header.group(1)] = block
    bodies = re.findall(r"while\(.*?body=%?([\w.\-]+)", text)
    assert bodies, "no while loop in the compiled program"
    cache = re.compile(rf"\[[0-9,]*{CONFIG.num_heads},[0-9]+,{CONFIG.head_dim}\]\S* copy\(")
    return sum(len(cache.findall(computations[body])) for body in bodies)


@pytest.mark.parametrize("runs", [1, 4])
def test_vmapped_sampler_updates_the_cache_in_place(params, runs):
    """Under vmap (over one run, as `critkl finetune` runs, or several) the compiled decode
    loop holds no copy of the key/value cache, like the plain one: the copies made the
    vmapped sampler several times slower (docs/throughput.md)."""
    run = functools.partial(generate, config=CONFIG, prompts=PROMPTS,
                            prompt_lengths=PROMPT_LENGTHS, max_length=MAX_LENGTH,
                            temperature=1.0, stop_fn=stop_on_multiple_of_seven)
    assert _cache_copies(lambda p, r: run(p, rng=r), params, jax.random.key(0)) == 0
    stacked = jax.tree.map(lambda x: jnp.stack([x] * runs), params)
    rngs = jax.random.split(jax.random.key(0), runs)
    assert _cache_copies(jax.vmap(lambda p, r: run(p, rng=r)), stacked, rngs) == 0


def test_cache_windows_cover_every_position_once():
    assert cache_windows(6, 16) == (6, 8, 12, 16)
    assert cache_windows(30, 413) == (104, 208, 312, 413)
    assert cache_windows(16, 16) == (16,)


@pytest.mark.parametrize("stop_fn", [never_stop, stop_on_multiple_of_seven])
def test_kept_hidden_states_match_full_forward(params, stop_fn):
    """Generation.hidden equals the full forward's hidden states on the generated tokens, at
    every position through each sequence's last token (prompts of different lengths)."""
    generation = generate(params, CONFIG, PROMPTS, PROMPT_LENGTHS, jax.random.key(7),
                          max_length=MAX_LENGTH, temperature=1.0, stop_fn=stop_fn,
                          keep_hidden=True)
    _, expected = GPT(CONFIG).apply({"params": params}, generation.tokens)
    for b, length in enumerate(np.asarray(generation.lengths)):
        np.testing.assert_allclose(generation.hidden[b, :length], expected[b, :length],
                                   atol=1e-4)
    assert generate(params, CONFIG, PROMPTS, PROMPT_LENGTHS, jax.random.key(7),
                    max_length=MAX_LENGTH, temperature=1.0).hidden is None


def test_decode_groups_cover_the_batch_evenly():
    assert decode_groups(50, 5) == (10, 5)
    assert decode_groups(128, 5) == (26, 5)   # 130 rows, the last group padded by 2
    assert decode_groups(11, 5) == (3, 4)
    assert decode_groups(3, 5) == (1, 3)


@pytest.mark.parametrize("rows_at_a_time", [1, 2])
def test_decoding_in_groups_writes_the_same_sequences(params, rows_at_a_time):
    """Sequences decoded a few at a time (as on a CPU) are those of the whole batch at once:
    each draws with its own key, and the loops of a group end with its own sequences."""
    run = functools.partial(generate, params, CONFIG, PROMPTS, PROMPT_LENGTHS,
                            jax.random.key(8), max_length=MAX_LENGTH, temperature=1.5,
                            stop_fn=stop_on_multiple_of_seven, keep_hidden=True)
    whole, grouped = run(rows_at_a_time=len(PROMPTS)), run(rows_at_a_time=rows_at_a_time)
    np.testing.assert_array_equal(grouped.tokens, whole.tokens)
    np.testing.assert_array_equal(grouped.lengths, whole.lengths)
    np.testing.assert_array_equal(grouped.done, whole.done)
    np.testing.assert_allclose(grouped.logprobs, whole.logprobs, atol=1e-5)
    for b, length in enumerate(np.asarray(whole.lengths)):  # defined through the last token
        np.testing.assert_allclose(grouped.hidden[b, :length], whole.hidden[b, :length],
                                   atol=1e-5)
    assert len(set(np.asarray(whole.lengths).tolist())) > 1  # groups end at different steps


def test_a_sequence_draws_the_same_tokens_in_a_smaller_batch(params):
    """Sequence b's draw depends on the key and b alone: the first two prompts continue as
    they do in the batch of three."""
    run = functools.partial(generate, params, CONFIG, rng=jax.random.key(9),
                            max_length=MAX_LENGTH, temperature=1.5, stop_fn=never_stop)
    whole = run(prompts=PROMPTS, prompt_lengths=PROMPT_LENGTHS)
    first_two = run(prompts=PROMPTS[:2], prompt_lengths=PROMPT_LENGTHS[:2])
    np.testing.assert_array_equal(first_two.tokens, whole.tokens[:2])


def test_vmapped_runs_decoding_in_groups_match_each_run(params):
    """Over several runs (the accelerator path of a sweep) the groups are decoded for every
    run at once; each run writes what it writes alone."""
    run = functools.partial(generate, config=CONFIG, prompts=PROMPTS,
                            prompt_lengths=PROMPT_LENGTHS, max_length=MAX_LENGTH,
                            temperature=1.5, stop_fn=stop_on_multiple_of_seven,
                            rows_at_a_time=2)
    param_sets = [params, jax.tree.map(lambda x: 0.9 * x, params)]
    rngs = jax.random.split(jax.random.key(10), 2)
    batched = jax.jit(jax.vmap(lambda p, r: run(p, rng=r)))(
        jax.tree.map(lambda *xs: jnp.stack(xs), *param_sets), rngs)
    for i in range(2):
        single = run(param_sets[i], rng=rngs[i], rows_at_a_time=len(PROMPTS))
        np.testing.assert_array_equal(batched.tokens[i], single.tokens)
        np.testing.assert_array_equal(batched.lengths[i], single.lengths)


def test_cpu_decode_groups_fit_weights_and_cache_in_the_budget():
    """A CPU decodes as many sequences at a time as keep the weights and their cache within
    its budget, and the whole batch at once when the weights alone exceed it."""
    from critkl import sampling
    from critkl.strategy import ACCELERATOR, CPU

    def nbytes(tree):
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))

    for name, length in (("tiny", 64), ("mini", 413), ("mini", 200)):
        config = model_preset(name)
        params = jax.eval_shape(lambda c=config: init_params(jax.random.key(0), c))
        rows = sampling.decode_rows(CPU, params, config, length)
        cache = 2 * config.num_layers * length * config.d_model * 4  # float32 keys, values
        assert nbytes(params) + rows * cache <= CPU.decode_group_bytes
        assert nbytes(params) + (rows + 1) * cache > CPU.decode_group_bytes
    paper = model_preset("paper")
    paper_params = jax.eval_shape(lambda: init_params(jax.random.key(0), paper))
    assert sampling.decode_rows(CPU, paper_params, paper, 413) is None
    assert sampling.decode_rows(ACCELERATOR, params, config, 413) is None  # the whole batch
