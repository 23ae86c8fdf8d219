"""The multiplication task (critkl.tasks.multiplication) against its plain-Python reference
(critkl.tasks.multiplication_reference)."""

import dataclasses
import functools
import random
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critkl import chunks, strategy
from critkl.tasks import multiplication_reference as ref
from critkl.tasks.addition.problems import Operands, operands_from_ints, operands_to_ints
from critkl.tasks.base import EOS_ID, PAD_ID, Episodes
from critkl.tasks.multiplication import Multiplication

VOCAB = Multiplication.vocabulary
ROLE_NAMES = Multiplication.role_names


TASK = Multiplication(3, 1)  # most tests' task: pre-trained up to 3 digits, RL on 4
BLOCK = 512  # rows per call, so that each jitted function compiles once per task and width


@functools.lru_cache(maxsize=None)
def jitted(task: Multiplication):
    return jax.jit(task.render), jax.jit(task.score), jax.jit(task.decision_codes)


def in_blocks(fn, *args):
    """fn on blocks of BLOCK rows (the last one padded by repeating its last row), results
    on the host, put back together."""
    count = jax.tree.leaves(args)[0].shape[0]
    padded = -(-count // BLOCK) * BLOCK
    args = jax.tree.map(lambda x: np.pad(np.asarray(x), [(0, padded - count)]
                                         + [(0, 0)] * (np.ndim(x) - 1), mode="edge"), args)
    outs = [jax.device_get(fn(*jax.tree.map(lambda x: x[i:i + BLOCK], args)))
            for i in range(0, padded, BLOCK)]
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:count], *outs)


def render(task, factors) -> Episodes:
    return in_blocks(jitted(task)[0], factors)


def score(task, tokens, episodes):
    return in_blocks(jitted(task)[1], tokens, episodes)


def decision_codes(task, episodes):
    return in_blocks(jitted(task)[2], episodes)


def specials(d: int) -> list[tuple[int, int]]:
    """Zeros, ones, 1-digit operands, carries everywhere, zeros inside, powers of ten."""
    top = 10**d - 1
    pairs = [(0, 0), (0, top), (top, 0), (1, 1), (9, 9), (2, 3), (top, top), (top, 1),
             (1, top), (10 ** (d - 1), 10 ** (d - 1)), (top, 9), (9, top), (5, 20)]
    if d >= 4:
        pairs += [(1000, 1001), (1001, 1000), (top, 10 ** (d - 1) + 1)]
    return pairs


def concatenate(*factors: Operands) -> Operands:
    return Operands(*(np.concatenate([np.asarray(f[k]) for f in factors]) for k in range(4)))


def annotation_arrays(a: int, b: int):
    """The reference's text, role ids and operand list positions of an episode."""
    chars = ref.annotated_episode(a, b)
    role_id = {name: i for i, name in enumerate(ROLE_NAMES)}
    role = np.fromiter((role_id[c.role] for c in chars), np.int32, len(chars))
    index = np.fromiter((c.index for c in chars), np.int32, len(chars))
    return "".join(c.char for c in chars), role, index


# ------------------------------------------------------------------ rendering
@pytest.mark.parametrize("task", [TASK, Multiplication(5, 1)], ids=str)
def test_renderer_matches_reference(task):
    """jnp samplers -> Python ints -> both renderers: text, lengths, roles and operand list
    positions equal on every problem (pre-training, RL and widest-level draws; edge
    cases)."""
    d = task.max_level
    keys = jax.random.split(jax.random.key(d), 3)
    count = 1800 // d
    draws = [task.sample_rl(keys[0], count), task.sample_pretraining(keys[1], count),
             task.sample_level(keys[2], count // 2, d), operands_from_ints(specials(d), d)]
    factors = concatenate(*draws)
    pairs = operands_to_ints(factors)
    episodes = render(task, factors)
    size = task.max_episode_length()
    assert episodes.tokens.shape == (len(pairs), size)
    bad = []
    for row, (a, b) in enumerate(pairs):
        text, role, index = annotation_arrays(a, b)
        length = int(episodes.length[row])
        ok = (VOCAB.decode(episodes.tokens[row]) == text
              and length == len(text)
              and (episodes.tokens[row, length:] == PAD_ID).all()
              and episodes.prompt_length[row] == len(ref.prompt_text(a, b))
              and episodes.result_length[row] == len(ref.result_line(text)) + 1
              and np.array_equal(episodes.role[row, :length], role)
              and np.array_equal(episodes.list_index[row, :length], index)
              and (episodes.list_index[row, length:] == -1).all())
        if not ok:
            bad.append((a, b))
    assert not bad, f"{len(bad)} problems differ, e.g. {bad[:5]}"
    assert episodes.length.max() <= size
    # the draws cover what they must: unequal lengths, every level, zeros
    a_len, b_len = np.asarray(factors.a_len), np.asarray(factors.b_len)
    assert (a_len != b_len).any() and set(a_len) == set(range(1, d + 1))
    assert any(0 in pair for pair in pairs)


def test_hand_example():
    episodes = render(TASK, TASK.problems_from_text(["47*36"]))
    want = ("Input:\n47*36\nTarget:\n<scratch>\n"
            "[4,7]*[3,6] , S=[] , 7*6+0+0=42 4*6+0+4=28\n"
            "[4,7]*[3] , S=[2,8,2] , 7*3+8+0=29 4*3+2+2=16\n"
            "[4,7]*[] , S=[1,6,9,2] , END\n"
            "</scratch>\n1 6 9 2\n")
    assert ref.episode_text(47, 36) == want
    assert VOCAB.decode(episodes.tokens[0]) == want
    assert int(episodes.result_length[0]) == len("1 6 9 2\n")


def test_reference_result_line_is_the_product():
    rng = random.Random(0)
    pairs = [(rng.randrange(10 ** rng.randint(1, 9)), rng.randrange(10 ** rng.randint(1, 9)))
             for _ in range(1500)] + specials(9)
    for a, b in pairs:
        text = ref.episode_text(a, b)
        assert ref.result_line(text) == " ".join(str(a * b)), (a, b)
        assert text.startswith(ref.prompt_text(a, b) + "\n<scratch>\n")
        assert ref.is_correct(text, a, b)


def test_episode_lengths():
    """max_episode_length is the worst case's (99..9 * 99..9) and no problem's is longer;
    the shortest episode is that of 1-digit operands with a 1-digit product."""
    rng = random.Random(1)
    for d in range(1, Multiplication.max_supported_level + 1):
        task = Multiplication(d, 0)
        top = 10**d - 1
        size = task.max_episode_length()
        assert size == len(ref.episode_text(top, top))
        assert task.prompt_width() == len(ref.prompt_text(top, top))
        for _ in range(100):
            a = rng.randrange(10 ** rng.randint(1, d))
            b = rng.randrange(10 ** rng.randint(1, d))
            assert len(ref.episode_text(a, b)) <= size
        assert task.shortest_episode_length() == min(
            len(ref.episode_text(a, b)) for a in range(10) for b in range(10))
    # the lengths the module docstring states
    assert [Multiplication(d, 0).max_episode_length() for d in (3, 4, 5)] == [275, 416, 591]


# ------------------------------------------------------------------ judging
def judge(tokens: np.ndarray, a: int, b: int) -> bool:
    """The reference judge on ids; ids outside the vocabulary read as a letter of no
    meaning to the format (the jnp scorer sees them as ordinary tokens too)."""
    ids = np.where((tokens < 0) | (tokens >= VOCAB.size), VOCAB.token_id("u"), tokens)
    return ref.is_correct(VOCAB.decode(ids), a, b)


def mutate(episodes: Episodes, seed: int):
    """One kind of damage per row (kind = row % 10)."""
    rng = np.random.default_rng(seed)
    tokens, lengths, prompt, roles = (np.array(x) for x in (
        episodes.tokens, episodes.length, episodes.prompt_length, episodes.role))
    digit_0 = VOCAB.token_id("0")
    kinds = np.arange(tokens.shape[0]) % 10
    for row in range(tokens.shape[0]):
        if kinds[row] == 9 and lengths[row] + 2 > tokens.shape[1]:
            kinds[row] = 2  # no room for a longer result line: a wrong digit instead
        kind, gen = kinds[row], np.arange(prompt[row], lengths[row])
        if kind == 1:    # one random token anywhere in the generation
            tokens[row, rng.choice(gen)] = rng.integers(0, VOCAB.size)
        elif kind == 2:  # one wrong digit in the result line
            where = rng.choice(gen[(roles[row, gen] == ROLE_NAMES.index("result"))
                                   & (tokens[row, gen] >= digit_0)
                                   & (tokens[row, gen] <= digit_0 + 9)])
            tokens[row, where] = digit_0 + (tokens[row, where] - digit_0 + 1) % 10
        elif kind == 3:  # cut short
            tokens[row, rng.integers(prompt[row], lengths[row]):] = PAD_ID
        elif kind == 4:  # uniform garbage after the prompt
            tokens[row, prompt[row]:] = rng.integers(0, VOCAB.size, tokens.shape[1] - prompt[row])
        elif kind == 5:  # a mistake in the scratchpad only: the result line decides
            scratch = gen[roles[row, gen] == ROLE_NAMES.index("product")]
            tokens[row, rng.choice(scratch)] = VOCAB.token_id("7")
        elif kind == 6:  # extra tokens after the episode's end (not PAD)
            tokens[row, lengths[row]:] = rng.integers(2, VOCAB.size, tokens.shape[1] - lengths[row])
        elif kind == 7:  # ids outside the vocabulary, anywhere after the prompt
            spots = rng.choice(gen, 3)
            tokens[row, spots] = rng.choice([-5, 64, 99, 1000], 3)
        elif kind == 8:  # EOS instead of the result line's newline, or a newline dropped
            tokens[row, lengths[row] - 1] = EOS_ID if rng.random() < 0.5 else VOCAB.token_id("1")
        elif kind == 9:  # the right result line, then more digits
            tokens[row, lengths[row] - 1:lengths[row] + 2] = VOCAB.encode(" 5\n")
    return tokens, kinds


def test_score_matches_reference_judge_on_damaged_episodes():
    task = TASK
    d = task.max_level
    factors = concatenate(task.sample_rl(jax.random.key(10), 900),
                          operands_from_ints(specials(d) * 9, d))
    pairs = operands_to_ints(factors)
    episodes = render(task, factors)
    tokens, kinds = mutate(episodes, seed=0)
    outcome = score(task, tokens, episodes)
    want = np.array([judge(tokens[r], a, b) for r, (a, b) in enumerate(pairs)])
    assert (outcome.success == want).all(), np.nonzero(outcome.success != want)[0][:10]
    assert outcome.success[kinds == 0].all() and outcome.success[kinds == 5].all()
    assert outcome.success[kinds == 6].all()
    assert not outcome.success[(kinds == 2) | (kinds == 3) | (kinds == 4) | (kinds == 8)
                               | (kinds == 9)].any()
    # successes end at the result line's newline; cut rows at their first PAD
    length = np.asarray(episodes.length)
    assert (outcome.last[outcome.success] == length[outcome.success] - 1).all()
    cut = kinds == 3
    first_pad = np.argmax((tokens == PAD_ID) & (np.arange(tokens.shape[1]) >= np.asarray(
        episodes.prompt_length)[:, None]), axis=1)
    assert outcome.terminated[cut].all() and (outcome.last[cut] == first_pad[cut]).all()


def test_score_never_fails_on_garbage():
    task = TASK
    episodes = render(task, task.sample_pretraining(jax.random.key(11), BLOCK))
    rng = np.random.default_rng(1)
    for width in (episodes.tokens.shape[1], episodes.tokens.shape[1] + 100, 30):
        garbage = rng.integers(-5, 100, (BLOCK, width)).astype(np.int32)
        outcome = score(task, garbage, episodes)
        assert not outcome.success.any()
        assert ((outcome.last >= 0) & (outcome.last < width)).all()
    cut = score(task, episodes.tokens[:, :30], episodes)  # narrower than the episodes
    assert not cut.success.any()


def test_stop_rule_ends_where_score_ends():
    task = TASK
    episodes = render(task, task.sample_rl(jax.random.key(12), BLOCK))
    tokens, _ = mutate(episodes, seed=3)
    rng = np.random.default_rng(2)
    format_ids = [VOCAB.token_id(c) for c in "/\n12,"] + [77]
    for row in range(0, BLOCK, 4):  # a quarter of the rows: garbage after the prompt
        p = int(episodes.prompt_length[row])
        ids = format_ids[1:] if row % 8 else format_ids + [PAD_ID, EOS_ID]  # half: no `/`
        tokens[row, p:] = rng.choice(ids, tokens.shape[1] - p)
    outcome = score(task, tokens, episodes)

    @jax.jit
    def stream(tokens, prompt_length):
        def step(carry, t):
            state, ended_at = carry
            new_state, ended = task.stop_rule(state, tokens[:, t])
            generating = t >= prompt_length
            ended_at = jnp.where(generating & ended & (ended_at < 0), t, ended_at)
            return (jnp.where(generating, new_state, 0), ended_at), None

        start = (jnp.zeros(tokens.shape[0], jnp.int32), jnp.full(tokens.shape[0], -1))
        return jax.lax.scan(step, start, jnp.arange(tokens.shape[1]))[0][1]

    ended_at = np.asarray(stream(jnp.asarray(tokens), episodes.prompt_length))
    assert (ended_at[outcome.terminated] == outcome.last[outcome.terminated]).all()
    assert (ended_at[~outcome.terminated] == -1).all()
    assert outcome.terminated.sum() > BLOCK // 2 and (~outcome.terminated).sum() > 20


# ------------------------------------------------------------------ samplers
def within_binomial(count, total, p, sigmas=5.0):
    return abs(count - total * p) <= sigmas * np.sqrt(total * p * (1 - p)) + 1


def check_digits(digits, lengths, width):
    batch = lengths.shape[0]
    long = lengths > 1
    lead = digits[np.arange(batch), lengths - 1]
    assert (lead[long] >= 1).all()
    for value in range(1, 10):
        assert within_binomial((lead[long] == value).sum(), long.sum(), 1 / 9)
    one = lengths == 1
    assert within_binomial((digits[one, 0] == 0).sum(), one.sum(), 1 / 10)
    assert (digits[np.arange(width)[None, :] >= lengths[:, None]] == 0).all()


def test_pretraining_lengths_and_digits_are_uniform():
    batch, task = 20_000, Multiplication(5, 2)
    ops = jax.device_get(task.sample_pretraining(jax.random.key(0), batch))
    assert ops.a.shape == (batch, 7)
    for lengths, digits in ((ops.a_len, ops.a), (ops.b_len, ops.b)):
        for length in range(1, 6):
            assert within_binomial((lengths == length).sum(), batch, 1 / 5)
        assert lengths.min() >= 1 and lengths.max() <= 5
        check_digits(digits, lengths, 7)


@pytest.mark.parametrize("n,k", [(3, 2), (4, 0)])
def test_rl_lengths_follow_the_difficult_operand_rule(n, k):
    batch = 20_000
    ops = jax.device_get(Multiplication(n, k).sample_rl(jax.random.key(1), batch))
    assert (np.maximum(ops.a_len, ops.b_len) == n + k).all()
    a_difficult = ops.a_len == n + k
    other = np.where(a_difficult, ops.b_len, ops.a_len)
    for length in range(1, n + k + 1):
        p = (0.5 / n if length <= n else 0.5 / k) if k else 1 / n
        assert within_binomial((other == length).sum(), batch, p)
    differ = ops.a_len != ops.b_len
    assert within_binomial((a_difficult & differ).sum(), differ.sum(), 0.5)
    check_digits(ops.a, ops.a_len, n + k)


def test_level_lengths():
    task = Multiplication(3, 2)
    for level in (1, 4, 5):
        ops = task.sample_level(jax.random.key(level), 2000, level)
        assert (ops.a_len == level).all() and (ops.b_len == level).all()
        check_digits(np.asarray(ops.b), np.asarray(ops.b_len), 5)


# ------------------------------------------------------------------ critical tokens, decisions
def test_critical_positions_match_reference():
    task = TASK
    d = task.max_level
    factors = concatenate(task.sample_rl(jax.random.key(20), 400),
                          operands_from_ints(specials(d), d))
    episodes = render(task, factors)
    critical = np.asarray(task.critical_positions(episodes))
    kinds = task.critical_kinds(episodes)
    comma = np.asarray(kinds["comma"])
    tokens = np.asarray(episodes.tokens)
    assert (comma | np.asarray(kinds["digit"])).tolist() == critical.tolist()
    assert (tokens[comma] == VOCAB.token_id(",")).all()
    for row, (a, b) in enumerate(operands_to_ints(factors)):
        assert np.nonzero(critical[row])[0].tolist() == ref.critical_positions(a, b, task.n)
    assert critical.any(axis=1).sum() > 200  # most RL problems have an operand beyond n


def test_critical_positions_hand_example():
    task = TASK
    episodes = render(task, task.problems_from_text(["1234*67"]))
    critical = np.asarray(task.critical_positions(episodes))[0]
    text = VOCAB.decode(episodes.tokens[0])
    marked = "".join(c if m or c == "\n" else "." for c, m in zip(text, critical))
    lines = marked.split("\n")
    # [1,2,3,4]: the ",4" of the a list on each of the 3 scratch lines; b has 2 digits
    assert [line.strip(".") for line in lines[4:7]] == [",4"] * 3
    assert set("".join(lines[:4] + lines[7:])) <= {"."}


def test_decision_codes_match_reference_keys():
    task = TASK
    d = task.max_level
    factors = concatenate(task.sample_pretraining(jax.random.key(21), 200),
                          task.sample_level(jax.random.key(22), 100, d),
                          operands_from_ints(specials(d), d))
    codes = decision_codes(task, render(task, factors))
    for row, (a, b) in enumerate(operands_to_ints(factors)):
        got = {int(t): task.key_of_code(int(codes[row, t])) for t in np.nonzero(codes[row] >= 0)[0]}
        assert got == ref.decision_keys(a, b), (a, b)
    # a code is the key's code, and decodes back
    every_key = {key for a, b in specials(d) for key in ref.decision_keys(a, b).values()}
    assert len(every_key) > 100
    for key in every_key:
        assert task.key_of_code(task.key_code(key)) == key
        assert task.key_code(list(key)) == task.key_code(key)  # JSON gives lists
    assert task.key_label((2, "operand", "a", 4), ",") == "line 2 a-list #4 ','"
    assert task.key_label((1, "carry", "", 0), "4") == "line 1 carry #0 digit"


@pytest.mark.parametrize("key", [(0, "operand", "a", 0), (1, "format", "", 0),
                                 (1, "operand", "x", 0), (1, "carry", "", 64), (1, "carry", ""),
                                 (1.5, "carry", "", 0), (11, "carry", "", 0)])
def test_bad_keys_are_refused(key):
    with pytest.raises(ValueError, match="not a decision key"):
        Multiplication(3, 1).key_code(key)


# ------------------------------------------------------------------ jit, vmap, chunks
def test_vmap_agrees_with_jit():
    """Every test runs the task jitted; under vmap (a leading axis of problem batches) render,
    score and the stop rule give what each batch gives on its own."""
    task = TASK

    def run(factors):
        episodes = task.render(factors)
        return episodes, task.score(episodes.tokens, episodes)

    stacked = jax.tree.map(lambda x, y: jnp.stack([x, y]), task.sample_rl(jax.random.key(3), 8),
                           task.sample_pretraining(jax.random.key(4), 8))
    mapped = jax.device_get(jax.jit(jax.vmap(run))(stacked))
    for k in range(2):
        factors = jax.tree.map(lambda x: x[k], stacked)
        episodes = render(task, factors)
        want = (episodes, score(task, episodes.tokens, episodes))
        chex.assert_trees_all_equal(jax.tree.map(lambda x: x[k], mapped), want)
    assert mapped[1].success.all()
    tokens = jnp.array([[VOCAB.token_id(c) for c in "/\n\n"]] * 2)
    state, ended = jnp.zeros((2, 3), jnp.int32), None
    for t in range(3):
        state, ended = jax.vmap(task.stop_rule)(state, jnp.broadcast_to(tokens[:, t:t + 1], (2, 3)))
    assert state.tolist() == [[3] * 3] * 2 and ended.all()


def test_chunked_rows_equal_one_pass():
    """On a CPU rendering and scoring go in chunks of rows; the result is the same."""
    task = TASK
    factors = task.sample_pretraining(jax.random.key(5), BLOCK)
    chunked = dataclasses.replace(strategy.CPU, row_chunk_elements=64 * task.max_episode_length())
    jaxpr = lambda s: str(  # noqa: E731
        jax.make_jaxpr(lambda o: chunks.render(task, o, s))(factors))
    assert jaxpr(chunked).count("scan[") > jaxpr(strategy.ACCELERATOR).count("scan[")
    episodes = jax.device_get(jax.jit(chunks.render, static_argnums=(0, 2))(task, factors, chunked))
    chex.assert_trees_all_equal(render(task, factors), episodes)  # one pass
    garbage = jax.random.randint(jax.random.key(6), episodes.tokens.shape, 0, VOCAB.size)
    keep = jax.random.bernoulli(jax.random.key(7), 0.5, (BLOCK, 1))
    tokens = np.asarray(jnp.where(keep, episodes.tokens, garbage))
    outcome = jax.device_get(
        jax.jit(chunks.score, static_argnums=(0, 3))(task, tokens, episodes, chunked))
    assert 0 < outcome.success.sum() < BLOCK
    chex.assert_trees_all_equal(score(task, tokens, episodes), outcome)


# ------------------------------------------------------------------ parameters and parsing
@pytest.mark.parametrize("args,field", [((0,), "n=0"), ((3, -1), "extra=-1"),
                                        ((9, 1), r"n=9, extra=1 must .*n \+ extra <= 9"),
                                        ((2.5,), "n=2.5"),
                                        ((True,), "n=True"), ((3, "1"), "extra='1'")])
def test_bad_parameters_name_the_field(args, field):
    with pytest.raises(ValueError, match=field):
        Multiplication(*args)


def test_sample_level_refuses_other_levels():
    task = Multiplication(3, 1)
    for level in (0, 5, 2.0):
        with pytest.raises(ValueError, match=f"level={level!r}"):
            task.sample_level(jax.random.key(0), 4, level)


def test_problems_from_text():
    task = Multiplication(3, 1)
    factors = task.problems_from_text(["47*36", " 0 * 9999 ", "5*5"])
    assert operands_to_ints(factors) == [(47, 36), (0, 9999), (5, 5)]
    assert factors.a.shape == (3, 4)
    assert task.problems_from_text([]).a.shape == (0, 4)
    for row in ["47+36", "4a*3", "12345*1", "*5", "", "1*2*3", "-1*2", "1.5*2", "07*3"]:
        with pytest.raises(ValueError, match=re.escape(f"problem {row!r}")):
            task.problems_from_text(["1*1", row])
    with pytest.raises(ValueError, match="operand -1"):
        operands_from_ints([(-1, 2)], 4)
