"""The constructed fork (`addition.render_closed_early`) against plain Python: the problem's prompt,
then the scratchpad of the problem with its `length`-digit operand cut by its lowest digit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critkl.tasks import addition
from critkl.tasks.addition import oracle, tokenizer


def _expected(a: int, b: int, close: bool, length: int) -> str:
    if close and len(str(a)) == length:
        return oracle.prompt_text(a, b) + oracle.target_text(a // 10, b)
    if close and len(str(b)) == length:
        return oracle.prompt_text(a, b) + oracle.target_text(a, b // 10)
    return oracle.episode_text(a, b)


def test_closed_early_matches_plain_python_on_2000_problems():
    length, digits = 3, 4
    operands = addition.sample_pretraining(jax.random.key(0), 2000, digits, digits)
    close = jax.random.bernoulli(jax.random.key(1), 0.5, (2000,))
    episodes = jax.jit(addition.render_closed_early, static_argnums=2)(operands, close, length)
    pairs = addition.operands_to_ints(operands)
    tokens = np.asarray(episodes.tokens)
    cut = 0
    for row, (a, b) in enumerate(pairs):
        text = _expected(a, b, bool(close[row]), length)
        cut += text != oracle.episode_text(a, b)
        assert tokenizer.decode(tokens[row]) == text, (a, b, bool(close[row]))
        assert int(episodes.length[row]) == len(text)
        assert int(episodes.prompt_length[row]) == len(oracle.prompt_text(a, b))
    assert cut > 200  # the fork was taken often enough to be tested


def test_roles_follow_the_cut_scratchpad():
    operands = addition.operands_from_ints([(128, 367), (12, 367)], 3)
    episodes = addition.render_closed_early(operands, jnp.array([True, False]), 3)
    plain = addition.render(operands)
    start = int(plain.prompt_length[0])
    # row 0 after its prompt is row 1's episode (12+367) after its own, one token shorter
    np.testing.assert_array_equal(episodes.role[0, start:start + 200],
                                  plain.role[1, start - 1:start + 199])
    np.testing.assert_array_equal(episodes.role[0, :start], plain.role[0, :start])
    np.testing.assert_array_equal(episodes.tokens[1], plain.tokens[1])


def test_a_one_digit_list_cannot_close_earlier():
    with pytest.raises(ValueError, match="length=1"):
        addition.render_closed_early(addition.operands_from_ints([(1, 2)], 1), jnp.array([True]), 1)
