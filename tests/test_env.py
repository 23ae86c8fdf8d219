"""The jnp environment against the plain-Python reference (critkl.tasks.addition.oracle)."""

import random

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critkl import chunks, strategy
from critkl.tasks import addition
from critkl.tasks.addition import Addition, oracle, tokenizer
from critkl.tasks.base import terminal_reward

D = addition.MAX_SUPPORTED_DIGITS
WIDEST = Addition(D, 0)  # problems of up to D digits
render = jax.jit(lambda operands: chunks.render(WIDEST, operands))
score = jax.jit(lambda tokens, reference: chunks.score(WIDEST, tokens, reference))


def random_problems(count: int, seed: int) -> list[tuple[int, int]]:
    """Lengths 1..20 each (so mostly unequal), plus zeros, carries and extremes."""
    rng = random.Random(seed)

    def number(length):
        if length == 1:
            return rng.randrange(10)
        return rng.randrange(10 ** (length - 1), 10**length)

    pairs = [(number(rng.randint(1, D)), number(rng.randint(1, D))) for _ in range(count)]
    specials = [(0, 0), (0, 7), (9, 0), (5, 5), (10**D - 1, 10**D - 1), (10**D - 1, 1),
                (1, 10**D - 1), (10 ** (D - 1), 0), (99, 1), (999, 999)]
    return specials + pairs


def expected_tokens(pairs):
    return [tokenizer.encode(oracle.episode_text(a, b)) for a, b in pairs]


def test_renderer_matches_reference_on_10000_problems():
    pairs = random_problems(10_000, seed=0)
    mismatches = 0
    for start in range(0, len(pairs), 2_000):
        chunk = pairs[start:start + 2_000]
        episodes = jax.device_get(render(addition.operands_from_ints(chunk, D)))
        for row, ((a, b), want) in enumerate(zip(chunk, expected_tokens(chunk))):
            length = int(episodes.length[row])
            ok = (
                length == len(want)
                and np.array_equal(episodes.tokens[row, :length], want)
                and (episodes.tokens[row, length:] == tokenizer.PAD_ID).all()
                and episodes.prompt_length[row] == len(oracle.prompt_text(a, b))
                and episodes.result_length[row] == len(" ".join(str(a + b)) + "\n")
            )
            mismatches += not ok
    assert mismatches == 0
    assert any(len(str(a)) != len(str(b)) for a, b in pairs)
    assert any(len(str(a + b)) > max(len(str(a)), len(str(b))) for a, b in pairs)


@pytest.mark.parametrize("digits", [1, 3, 13, 20])
def test_render_with_fewer_digits_and_length_bound(digits):
    worst = 10**digits - 1
    pairs = [(worst, worst), (1, 0), (10 ** (digits - 1), worst)]
    episodes = render(addition.operands_from_ints(pairs, digits))
    assert episodes.tokens.shape == (3, addition.max_episode_length(digits))
    assert addition.max_episode_length(digits) == len(oracle.episode_text(worst, worst))
    for row, (a, b) in enumerate(pairs):
        assert tokenizer.decode(episodes.tokens[row]) == oracle.episode_text(a, b)


def test_chunked_rows_equal_one_pass():
    """Large batches are rendered and scored in chunks of rows (`critkl.chunks`); a chunked
    pass gives the same arrays as one whole-batch pass, on right and garbage episodes."""
    operands = addition.sample_pretraining(jax.random.key(5), 1024, D, D)
    chunked = strategy.CPU
    episodes = chunks.render(WIDEST, operands, chunked)
    chunked_scans = str(jax.make_jaxpr(
        lambda o: chunks.render(WIDEST, o, chunked))(operands)).count("scan[")
    garbage = jax.random.randint(jax.random.key(6), episodes.tokens.shape, 0, tokenizer.VOCAB_SIZE)
    keep = jax.random.bernoulli(jax.random.key(7), 0.5, (1024, 1))
    tokens = jnp.where(keep, episodes.tokens, garbage)
    outcome = chunks.score(WIDEST, tokens, episodes, chunked)
    assert 0 < int(outcome.success.sum()) < 1024

    one_pass = strategy.ACCELERATOR  # no row chunks
    assert str(jax.make_jaxpr(
        lambda o: chunks.render(WIDEST, o, one_pass))(operands)).count("scan[") \
        < chunked_scans  # the first pass did chunk
    chex.assert_trees_all_equal(chunks.render(WIDEST, operands, one_pass), episodes)
    chex.assert_trees_all_equal(chunks.score(WIDEST, tokens, episodes, one_pass), outcome)


class TestJitAgreement(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_render_and_score(self):
        operands = addition.sample_rl(jax.random.key(3), 16, 3, 2, 6)

        def run(ops):
            episodes = addition.render(ops)
            return episodes, addition.score(episodes.tokens, episodes)

        episodes, outcome = self.variant(run)(operands)
        want_episodes, want_outcome = jax.jit(run)(operands)
        chex.assert_trees_all_equal(episodes, want_episodes)
        chex.assert_trees_all_equal(outcome, want_outcome)
        assert bool(outcome.success.all())


def within_binomial(count, total, p, sigmas=5.0):
    return abs(count - total * p) <= sigmas * np.sqrt(total * p * (1 - p)) + 1


def test_pretraining_lengths_and_digits_are_uniform():
    batch, n = 40_000, 5
    ops = jax.device_get(addition.sample_pretraining(jax.random.key(0), batch, n, 8))
    for lengths, digits in ((ops.a_len, ops.a), (ops.b_len, ops.b)):
        for length in range(1, n + 1):
            assert within_binomial((lengths == length).sum(), batch, 1 / n)
        long = lengths > 1
        lead = digits[np.arange(batch), lengths - 1]
        assert (lead[long] >= 1).all()
        for value in range(1, 10):
            assert within_binomial((lead[long] == value).sum(), long.sum(), 1 / 9)
        one = lengths == 1
        assert within_binomial((digits[one, 0] == 0).sum(), one.sum(), 1 / 10)
        position = np.arange(8)[None, :]
        assert (digits[position >= lengths[:, None]] == 0).all()


def test_rl_lengths_follow_the_difficult_operand_rule():
    batch, n, k = 40_000, 3, 2
    ops = jax.device_get(addition.sample_rl(jax.random.key(1), batch, n, k, 8))
    longest = np.maximum(ops.a_len, ops.b_len)
    assert (longest == n + k).all()
    a_difficult = ops.a_len == n + k
    other = np.where(a_difficult, ops.b_len, ops.a_len)
    for length in range(1, n + k + 1):
        p = 0.5 / n if length <= n else 0.5 / k
        assert within_binomial((other == length).sum(), batch, p)
    # which operand is the difficult one is a fair coin (ties count for a)
    differ = ops.a_len != ops.b_len
    assert within_binomial((a_difficult & differ).sum(), differ.sum(), 0.5)


def test_identical_lengths():
    ops = addition.sample_identical(jax.random.key(2), 1000, 7, 9)
    assert (ops.a_len == 7).all() and (ops.b_len == 7).all()


def test_sampler_errors_name_the_problem():
    with pytest.raises(ValueError, match="n=3, extra=18 must satisfy .* n \\+ extra <= 20"):
        Addition(3, 18)
    with pytest.raises(ValueError, match="extra >= 0"):
        Addition(3, -1)
    with pytest.raises(ValueError, match="n='3' must be an integer"):
        Addition("3", 1)
    assert Addition(3, 2).max_level == 5
    with pytest.raises(ValueError, match="max_digits=21"):
        addition.sample_identical(jax.random.key(0), 2, 3, 21)
    with pytest.raises(ValueError, match="operand -1"):
        addition.operands_from_ints([(-1, 2)], 4)


def python_judge(tokens, a, b) -> bool:
    text = tokenizer.decode(tokens)  # stops at the first PAD or EOS
    return oracle.is_correct(text, a, b)


def test_score_matches_reference_judge_on_mutated_episodes():
    rng = np.random.default_rng(0)
    pairs = random_problems(600, seed=1)[:600]
    operands = addition.operands_from_ints(pairs, D)
    episodes = render(operands)
    tokens, lengths, prompt, roles = (
        np.array(x) for x in (episodes.tokens, episodes.length, episodes.prompt_length, episodes.role)
    )
    kinds = []
    for row in range(len(pairs)):
        kind = row % 6
        kinds.append(kind)
        gen = np.arange(prompt[row], lengths[row])
        if kind == 1:    # one random token anywhere in the generation
            tokens[row, rng.choice(gen)] = rng.integers(0, tokenizer.VOCAB_SIZE)
        elif kind == 2:  # one wrong digit in the result line
            where = lengths[row] - 2  # the last digit of the result
            tokens[row, where] = tokenizer.DIGIT_0 + (tokens[row, where] - tokenizer.DIGIT_0 + 1) % 10
        elif kind == 3:  # cut short
            tokens[row, rng.integers(prompt[row], lengths[row]):] = tokenizer.PAD_ID
        elif kind == 4:  # uniform garbage after the prompt
            tokens[row, prompt[row]:] = rng.integers(0, tokenizer.VOCAB_SIZE, tokens.shape[1] - prompt[row])
        elif kind == 5:  # a mistake in the scratchpad only: the result line decides
            scratch = gen[roles[row, gen] == addition.ROLE["sum"]]
            tokens[row, rng.choice(scratch)] = tokenizer.token_id("7")
    outcome = jax.device_get(score(jnp.asarray(tokens), episodes))
    want = [python_judge(tokens[r], a, b) for r, (a, b) in enumerate(pairs)]
    assert outcome.success.tolist() == want
    kinds = np.array(kinds)
    assert outcome.success[kinds == 0].all()
    assert not outcome.success[kinds == 2].any()
    assert outcome.success[kinds == 5].all()
    assert not outcome.success[(kinds == 3) | (kinds == 4)].any()


def test_score_never_fails_on_garbage():
    rng = np.random.default_rng(1)
    operands = addition.sample_pretraining(jax.random.key(5), 256, 4, 4)
    episodes = render(operands)
    for width in (episodes.tokens.shape[1], episodes.tokens.shape[1] + 100, 40):
        garbage = jnp.asarray(rng.integers(-5, 100, (256, width)), jnp.int32)
        outcome = score(garbage, episodes)
        reward = terminal_reward(outcome)
        assert np.isfinite(np.asarray(reward)).all()
        assert set(np.unique(np.asarray(reward))) <= {-1.0, 1.0}
        assert ((np.asarray(outcome.last) >= 0) & (np.asarray(outcome.last) < width)).all()


def test_terminal_reward_is_ternary_on_correct_and_wrong():
    operands = addition.operands_from_ints([(12, 34), (12, 34)], 2)
    episodes = render(operands)
    tokens = episodes.tokens.at[1, episodes.length[1] - 2].set(tokenizer.token_id("9"))
    reward = terminal_reward(score(tokens, episodes))
    assert reward.tolist() == [1.0, -1.0]


def test_stop_rule_ends_where_score_ends():
    rng = np.random.default_rng(2)
    operands = addition.sample_pretraining(jax.random.key(6), 300, 3, 3)
    episodes = render(operands)
    tokens = np.array(episodes.tokens)
    for row in range(0, 300, 3):  # some rows: garbage after the prompt
        p = int(episodes.prompt_length[row])
        tokens[row, p:] = rng.choice([tokenizer.token_id(c) for c in "/\n12,"] + [0], tokens.shape[1] - p)
    outcome = score(jnp.asarray(tokens), episodes)
    state = jnp.zeros(300, jnp.int32)
    ended_at = np.full(300, -1)
    for t in range(tokens.shape[1]):
        state, ended = addition.stop_rule(state, jnp.asarray(tokens[:, t]))
        newly = np.asarray(ended) & (ended_at < 0) & (t >= np.asarray(episodes.prompt_length))
        ended_at[newly] = t
    terminated = np.asarray(outcome.terminated)
    assert (ended_at[terminated] == np.asarray(outcome.last)[terminated]).all()
    assert (ended_at[~terminated] == -1).all()


def test_critical_positions_hand_example():
    episodes = render(addition.operands_from_ints([(12345, 67)], 5))
    critical = addition.critical_positions(episodes, 3)[0]
    text = tokenizer.decode(episodes.tokens[0])
    marked = "".join(c if m or c == "\n" else "." for c, m in zip(text, np.asarray(critical)))
    lines = marked.split("\n")
    # [1,2,3,4,5]: the ",4,5" of line 0 and the ",4" of line 1 are beyond 3 digits.
    assert lines[4].strip(".") == ",4,5"
    assert lines[5].strip(".") == ",4"
    assert set("".join(lines[6:])) <= {"."}


def test_critical_positions_count():
    n = 3
    ops = addition.sample_pretraining(jax.random.key(7), 500, 6, 6)
    critical = np.asarray(addition.critical_positions(render(ops), n)).sum(axis=1)
    a_len, b_len = np.asarray(ops.a_len), np.asarray(ops.b_len)
    want = [
        sum(2 * max(0, la - i - n) + 2 * max(0, lb - i - n) for i in range(max(la, lb)))
        for la, lb in zip(a_len, b_len)
    ]
    assert critical.tolist() == want
