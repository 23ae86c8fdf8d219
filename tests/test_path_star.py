"""The path-star task's jnp programs against its plain-Python reference
(critkl.tasks.path_star_reference)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critkl import chunks, strategy
from critkl.tasks import path_star_reference as ref
from critkl.tasks.base import EOS_ID, PAD_ID
from critkl.tasks.path_star import ROLE, PathStar

VOCAB = PathStar.vocabulary
NEWLINE = VOCAB.token_id("\n")

# (n, extra, degree): the default, the smallest, a wide one, the longest arms, every label used.
CONFIGS = [(3, 1, 3, 0), (1, 0, 2, 0), (4, 2, 5, 0), (25, 0, 2, 0), (1, 2, 17, 0),
           (5, 1, 2, 1), (3, 2, 4, 1)]


@functools.cache
def programs(task: PathStar):
    """Jitted render and score of a task (compiled once per task in this module)."""
    return jax.jit(task.render), jax.jit(task.score)


def to_reference(task: PathStar, problems) -> list[ref.Problem]:
    """The arrays' problems as the reference's: edge slot e = a * M + j leads from node slot
    (0 if j == 0 else e) to node slot 1 + e; the prompt lists the shown slots (j < level) in
    `edge_order`; the goal is the last node of arm `goal_arm`."""
    labels, level, order, goal = (np.asarray(x) for x in problems)
    m = task.max_level
    out = []
    for b in range(labels.shape[0]):
        name = lambda slot: ref.NODE_LABELS[labels[b, slot]]  # noqa: E731
        edges = tuple((name(0 if e % m == 0 else e), name(1 + e))
                      for e in order[b].tolist() if e % m < level[b])
        out.append(ref.Problem(edges, name(0), name(1 + goal[b] * m + level[b] - 1)))
    return out


def text_of(tokens, start=0, stop=None) -> str:
    return VOCAB.decode(np.asarray(tokens)[start:stop])


def check_episodes(task: PathStar, problems, episodes) -> list[ref.Problem]:
    """Every episode equals the reference's text byte for byte, with its lengths, roles and
    path indices; the reference checks each graph. Returns the reference problems."""
    episodes = jax.device_get(episodes)
    reference = to_reference(task, problems)
    level = np.asarray(problems.level)
    assert episodes.tokens.shape == (len(reference), task.max_episode_length())
    for b, problem in enumerate(reference):
        ref.check_star(problem, task.degree, int(level[b]))
        want = ref.episode_text(problem, task.child_first)
        length, prompt = int(episodes.length[b]), int(episodes.prompt_length[b])
        assert text_of(episodes.tokens[b]) == want
        assert length == len(want) and (episodes.tokens[b, length:] == PAD_ID).all()
        assert prompt == len(ref.prompt_text(problem, task.child_first))
        assert int(episodes.result_length[b]) == len(ref.answer_text(problem))
        assert ref.parse_prompt(text_of(episodes.tokens[b], 0, prompt),
                                task.child_first) == problem
        # roles and path indices: k-th node of the path, then the terminator
        k = np.arange(length - prompt - 1)
        last = int(level[b])
        want_role = [ROLE["start"] if i == 0 else ROLE["first_step"] if i == 1
                     else ROLE["goal"] if i == last else ROLE["step"] for i in k]
        assert (episodes.role[b, :prompt] == ROLE["prompt"]).all()
        assert (episodes.role[b, prompt:length - 1] == want_role).all()
        assert episodes.role[b, length - 1] == ROLE["format"]
        assert (episodes.list_index[b, prompt:length - 1] == k).all()
        assert (episodes.list_index[b, :prompt] == -1).all()
        assert (episodes.list_index[b, length - 1:] == -1).all()
    return reference


@pytest.mark.parametrize("n,extra,degree,child_first", CONFIGS)
def test_renderer_matches_reference(n, extra, degree, child_first):
    task = PathStar(n, extra, degree, child_first=child_first)
    render, _ = programs(task)
    key = jax.random.key(n * 100 + degree)
    for problems in (task.sample_pretraining(key, 200), task.sample_rl(key, 200)):
        reference = check_episodes(task, problems, render(problems))
    longest = len(ref.episode_text(reference[-1]))  # an RL problem: level n + extra
    assert task.max_episode_length() == longest
    assert task.prompt_width() == len(ref.prompt_text(reference[-1]))
    shortest = task.sample_level(key, 1, 1)
    assert task.shortest_episode_length() == len(ref.episode_text(
        to_reference(task, shortest)[0]))


def test_hand_example():
    task = PathStar(2, 1, degree=3)
    episodes = programs(task)[0](task.problems_from_text(["xB,qM,ch,qx,Me,qc q>h"]))
    assert text_of(episodes.tokens[0]) == "xB,qM,ch,qx,Me,qc\nq>h\nqch\n"
    assert episodes.prompt_length.tolist() == [22]
    assert episodes.result_length.tolist() == [4]
    critical = np.asarray(task.critical_positions(episodes)[0])
    assert np.nonzero(critical)[0].tolist() == [23]  # the `c`
    assert VOCAB.decode(episodes.tokens[0, 23:24]) == "c"
    codes = np.asarray(task.decision_codes(episodes)[0])
    keys = [task.key_of_code(int(c)) for c in codes[codes >= 0]]
    assert keys == [("step", 0), ("step", 1), ("step", 2), ("end",)]
    assert (codes[:22] == -1).all() and (codes[26:] == -1).all()
    assert task.key_label(("step", 1), "c") == "path node 1 (first step) label"
    assert task.key_label(("end",), "\n") == "path end '\\n'"
    assert list(task.critical_kinds(episodes)) == ["first_step"]


def test_hand_example_child_first():
    """The same graph with each edge written child then parent: the same answer."""
    task = PathStar(2, 1, degree=3, child_first=1)
    episodes = programs(task)[0](task.problems_from_text(["Bx,Mq,hc,xq,eM,cq q>h"]))
    assert text_of(episodes.tokens[0]) == "Bx,Mq,hc,xq,eM,cq\nq>h\nqch\n"
    parent_first = PathStar(2, 1, degree=3)
    same = programs(parent_first)[0](parent_first.problems_from_text(["xB,qM,ch,qx,Me,qc q>h"]))
    for field in ("prompt_length", "length", "role", "list_index", "result_length"):
        assert (np.asarray(getattr(episodes, field)) == np.asarray(getattr(same, field))).all()
    with pytest.raises(ValueError, match="child_first=2 is not supported: allowed 0"):
        PathStar(2, 1, child_first=2)


@pytest.mark.parametrize("child_first", [0, 1])
def test_problems_from_text_round_trip_and_errors(child_first):
    task = PathStar(3, 1, degree=4, child_first=child_first)
    render, _ = programs(task)
    episodes = jax.device_get(render(task.sample_pretraining(jax.random.key(1), 100)))
    rows = [text_of(episodes.tokens[b], 0, int(episodes.prompt_length[b])).replace("\n", " ")
            for b in range(100)]
    parsed = task.problems_from_text(rows)
    again = jax.device_get(render(parsed))
    chex.assert_trees_all_equal(again, episodes)
    check_episodes(task, parsed, again)

    bad = {
        "ab,ac,ad,ae": "START>GOAL",                    # no start>goal
        "ab,ac,ad,ae a-b": "START>GOAL",
        "ab,ac,ad a>b": "3 arms",                       # degree 3, not 4
        "ab,ac,ad,ae,bf a>f": "equal length",
        "ab,ac,ad,ae,bf,cg,dh,ei a>b": "not the leaf",  # goal not a leaf
        "ab,ac,ad,ae,bf,bg,dh,ei a>f": "branches",
        "ab,ac,ad,ae,bf,cg,dh,eh a>f": "two parents",
        "ab,ac,ad,a1 a>b": "not a node label",
        "ab,ac,ad,aa a>b": "two different labels",
        "ab,ac,ad,ae,bf,cg,dh,ei,fj,gk,hl,im,jn,ko,lp,mq,nr,os,pt,qu a>r": "arm length 5",
    }
    if child_first:  # the same graphs, each edge written the other way round
        bad = {" ".join([",".join(e[::-1] for e in row.split(" ")[0].split(","))]
                        + row.split(" ")[1:]): why for row, why in bad.items()}
    for row, why in bad.items():
        with pytest.raises(ValueError, match=f"problem '{row}' .*{why}"):
            task.problems_from_text([rows[0], row])


def python_judge(problem: ref.Problem, tokens: np.ndarray, prompt: int):
    """The reference judge on the generation's ids: (success, terminated, last)."""
    symbols = [None if i in (PAD_ID, EOS_ID)
               else VOCAB.characters[i - 2] if 2 <= i < VOCAB.size else f"<{i}>"
               for i in tokens[prompt:].tolist()]
    success, terminated, end = ref.judge(problem, symbols)
    return success, terminated, prompt + end if terminated else len(tokens) - 1


def corrupted(task: PathStar, problems, episodes, width: int, seed: int):
    """Generations of ten kinds (row % 10) [B, width] from the correct episodes."""
    rng = np.random.default_rng(seed)
    reference = to_reference(task, problems)
    base = np.asarray(episodes.tokens)
    tokens = np.zeros((base.shape[0], width), np.int32)
    tokens[:, :min(width, base.shape[1])] = base[:, :width]
    labels = np.arange(2, 2 + 52)
    for b, problem in enumerate(reference):
        prompt, length = int(episodes.prompt_length[b]), int(episodes.length[b])
        end = length - 1  # the terminator
        kind = b % 10
        if kind == 1:    # a wrong first step: another arm's first node
            others = [c for p, c in problem.edges if p == problem.start
                      and c != ref.path(problem)[1]]
            tokens[b, prompt + 1] = VOCAB.token_id(others[rng.integers(len(others))])
        elif kind == 2:  # truncated by PAD inside the answer
            tokens[b, rng.integers(prompt, end + 1):] = PAD_ID
        elif kind == 3:  # extra tokens before the newline
            tokens[b, end:end + 3] = [rng.choice(labels), rng.choice(labels), NEWLINE]
        elif kind == 4:  # no terminator at all: labels to the end
            tokens[b, end:] = rng.choice(labels, width - end)
        elif kind == 5:  # random ids, in and out of the vocabulary
            tokens[b, prompt:] = rng.integers(-5, 100, width - prompt)
        elif kind == 6:  # EOS where the newline goes
            tokens[b, end] = EOS_ID
        elif kind == 7:  # right, then anything after the terminator
            tokens[b, end + 1:] = rng.integers(-5, 100, width - end - 1)
        elif kind == 8:  # a wrong later node (or goal) on the path
            where = rng.integers(prompt + 1, end)
            tokens[b, where] = 2 + (tokens[b, where] - 2 + 1) % 52
        elif kind == 9:  # a newline too early
            tokens[b, rng.integers(prompt, end)] = NEWLINE
    return reference, tokens


def test_score_matches_reference_judge():
    task = PathStar(3, 1, degree=3)
    render, score = programs(task)
    key = jax.random.key(7)  # levels 1..n, and n + extra (the longest answers)
    problems = jax.tree.map(lambda *x: jnp.concatenate(x), task.sample_pretraining(key, 140),
                            task.sample_rl(key, 60))
    episodes = render(problems)
    size = task.max_episode_length()
    for width in (size + 6, size - 4, 12):
        reference, tokens = corrupted(task, problems, episodes, max(width, size + 6), width)
        tokens = tokens[:, :width]
        outcome = jax.device_get(score(jnp.asarray(tokens), episodes))
        prompt = np.asarray(episodes.prompt_length)
        want = [python_judge(p, tokens[b], int(prompt[b])) for b, p in enumerate(reference)]
        assert outcome.success.tolist() == [w[0] for w in want]
        assert outcome.terminated.tolist() == [w[1] for w in want]
        assert outcome.last.tolist() == [w[2] for w in want]
        if width == size + 6:
            kinds = np.arange(200) % 10
            assert outcome.success[(kinds == 0) | (kinds == 7)].all()
            assert not outcome.success[(kinds != 0) & (kinds != 7) & (kinds != 5)].any()
            assert not outcome.terminated[kinds == 4].any()
            assert outcome.terminated[(kinds != 4) & (kinds != 5)].all()


def test_stop_rule_ends_where_score_ends():
    task = PathStar(3, 1, degree=3)
    render, score = programs(task)
    problems = task.sample_pretraining(jax.random.key(8), 200)
    episodes = render(problems)
    _, tokens = corrupted(task, problems, episodes, task.max_episode_length() + 6, 3)
    outcome = jax.device_get(score(jnp.asarray(tokens), episodes))
    prompt = np.asarray(episodes.prompt_length)

    @jax.jit
    def ends(tokens):  # as the sampler runs it: generated tokens only, state from zero
        def step(carry, t):
            state, ended = carry
            active = (t >= prompt) & ~ended
            new_state, stops = task.stop_rule(state, tokens[:, t])
            return (jnp.where(active, new_state, state), ended | (active & stops)), \
                active & stops
        _, stopped = jax.lax.scan(step, (jnp.zeros(200, jnp.int32), jnp.zeros(200, bool)),
                                  jnp.arange(tokens.shape[1]))
        return stopped.T

    stopped = np.asarray(ends(jnp.asarray(tokens)))
    ended_at = np.where(stopped.any(axis=1), stopped.argmax(axis=1), -1)
    assert (ended_at == np.where(outcome.terminated, outcome.last, -1)).all()
    assert outcome.terminated.any() and not outcome.terminated.all()


def within_binomial(count, total, p, sigmas=5.0):
    return abs(count - total * p) <= sigmas * np.sqrt(total * p * (1 - p)) + 1


def test_samplers():
    n, extra, degree, batch = 4, 2, 3, 3000
    task = PathStar(n, extra, degree)
    m = task.max_level
    key = jax.random.key(9)
    pre = jax.device_get(task.sample_pretraining(key, batch))
    for level in range(1, n + 1):
        assert within_binomial((pre.level == level).sum(), batch, 1 / n)
    assert set(pre.level.tolist()) == set(range(1, n + 1))
    assert (task.sample_rl(key, 100).level == n + extra).all()
    assert (task.sample_level(key, 100, 5).level == 5).all()
    with pytest.raises(ValueError, match="level=7"):
        task.sample_level(key, 10, 7)
    with pytest.raises(ValueError, match="level=0"):
        task.sample_level(key, 10, 0)
    shortest = jax.device_get(
        PathStar(n, extra, degree, min_level=3).sample_pretraining(key, batch))
    for level in (3, 4):
        assert within_binomial((shortest.level == level).sum(), batch, 1 / 2)
    assert set(shortest.level.tolist()) == {3, 4}
    for problems in (pre, shortest, jax.device_get(task.sample_rl(key, batch))):
        assert (np.sort(problems.edge_order, axis=1) == np.arange(degree * m)).all()
        assert (np.sort(problems.labels, axis=1)[:, 1:]
                != np.sort(problems.labels, axis=1)[:, :-1]).all()
        assert ((problems.labels >= 0) & (problems.labels < 52)).all()
        for arm in range(degree):  # the goal arm, so the first step, is uniform over arms
            assert within_binomial((problems.goal_arm == arm).sum(), batch, 1 / degree)
        # no leak in the prompt's order: the goal arm's first edge is at a uniform rank among
        # the arms' first edges
        where = np.argsort(problems.edge_order, axis=1)  # prompt rank of each edge slot
        firsts = where[:, np.arange(degree) * m]
        rank = (firsts < firsts[np.arange(batch), problems.goal_arm][:, None]).sum(axis=1)
        for r in range(degree):
            assert within_binomial((rank == r).sum(), batch, 1 / degree)
    # the edges are shuffled: where the prompt lists edge slot 0 (present at every level)
    for r in range(degree * m):
        assert within_binomial((where[:, 0] == r).sum(), batch, 1 / (degree * m))
    # the first step's label is any label
    first = pre.labels[np.arange(batch), 1 + pre.goal_arm * m]
    assert len(set(first.tolist())) == 52


def test_jit_and_vmap():
    task = PathStar(2, 1, degree=3)
    render, _ = programs(task)
    keys = jax.random.split(jax.random.key(10), 2)

    def run(key):
        problems = task.sample_rl(key, 8)
        episodes = task.render(problems)
        return problems, episodes, task.score(episodes.tokens, episodes)

    mapped = jax.jit(jax.vmap(run))(keys)
    single = jax.jit(run)
    for i in range(2):
        one = single(keys[i])
        chex.assert_trees_all_equal(jax.tree.map(lambda x: x[i], mapped), one)
        assert bool(one[2].success.all())
    flat = lambda tree: jax.tree.map(lambda x: x.reshape((16,) + x.shape[2:]), tree)  # noqa: E731
    chex.assert_trees_all_equal(render(flat(mapped[0])), flat(mapped[1]))  # one batch of 16


def test_chunked_rows_equal_one_pass():
    task = PathStar(3, 1, degree=3)
    problems = task.sample_pretraining(jax.random.key(11), 200)
    size = task.max_episode_length()
    chunked = strategy.Strategy("test", None, row_chunk_elements=8 * size, runs_in_turn=True)
    assert "scan" in str(jax.make_jaxpr(lambda p: chunks.render(task, p, chunked))(problems))
    episodes = jax.jit(chunks.render, static_argnums=(0, 2))(task, problems, chunked)
    one_pass = programs(task)[0](problems)  # the default devices' plan: one pass here
    chex.assert_trees_all_equal(episodes, one_pass)
    _, tokens = corrupted(task, problems, episodes, size, 4)
    score = jax.jit(chunks.score, static_argnums=(0, 3))
    chex.assert_trees_all_equal(score(task, tokens, episodes, chunked),
                                programs(task)[1](tokens, episodes))


def test_decision_keys():
    task = PathStar(3, 1)
    for code in range(task.max_supported_level + 2):
        assert task.key_code(task.key_of_code(code)) == code
    assert task.key_code(["step", 4]) == 4  # keys come back from JSON as lists
    for key in [("step", -1), ("step", 26), ("step", True), ("step", 1.5), ("foo",), ()]:
        with pytest.raises(ValueError, match="not a decision key"):
            task.key_code(key)
    for code in (-1, 27):
        with pytest.raises(ValueError, match=f"code {code}"):
            task.key_of_code(code)
    episodes = jax.device_get(programs(task)[0](task.sample_pretraining(jax.random.key(12), 50)))
    codes = np.asarray(task.decision_codes(episodes))
    critical = np.asarray(task.critical_positions(episodes))
    for b in range(50):
        prompt, length = int(episodes.prompt_length[b]), int(episodes.length[b])
        want = np.full(codes.shape[1], -1)
        want[prompt:length - 1] = np.arange(length - prompt - 1)
        want[length - 1] = task.key_code(("end",))
        assert (codes[b] == want).all()
        assert np.nonzero(critical[b])[0].tolist() == [prompt + 1]


def test_bad_parameters_name_the_field():
    for kwargs, field in [(dict(n=0), "n=0"), (dict(n=3, extra=-1), "extra=-1"),
                          (dict(n=26, extra=0), "n=26"), (dict(n=3, degree=1), "degree=1"),
                          (dict(n=20, extra=5, degree=3), "degree=3"),
                          (dict(n=3, degree="3"), "degree='3'"),
                          (dict(n=2, extra=1, degree=18), "degree=18"),
                          (dict(n=3, extra=1, degree=13), "degree=13"),
                          (dict(n=3, min_level=0), "min_level=0 .*allowed 1..n=3"),
                          (dict(n=3, min_level=4), "min_level=4 .*allowed 1..n=3"),
                          (dict(n=3, min_level=2.0), "min_level=2.0 must be an integer")]:
        with pytest.raises(ValueError, match=field):
            PathStar(**kwargs)
    assert PathStar(2, 1, degree=17).nodes == 52
    assert PathStar(3, 1, degree=12).nodes == 49
    assert PathStar(25, 0, degree=2).max_level == PathStar.max_supported_level
    assert PathStar.vocabulary.size <= 64
    assert PathStar.role_names[0] == "prompt"


def test_reference_rejects_what_is_not_a_path_star_problem():
    good = ref.parse_prompt("xB,qM,ch,qx,Me,qc\nq>h\n")
    ref.check_star(good, 3, 2)
    assert ref.answer_text(good) == "qch\n"
    bad = {
        "xB,qM,ch,qx,Me,qc\nq>c\n": "not a leaf",          # goal inside an arm
        "xB,qM,ch,qx,Me,qc\nq>q\n": "not a leaf",
        "xB,qM,ch,qx,xe,qc\nq>h\n": "branches",
        "xB,qM,ch,qx,Mh,qc\nq>h\n": "two edges",           # a label twice
        "xB,qM,ch,qx,Me,Bc\nq>h\n": "arms",                # a centre of degree 2
        "xB,qM,ch,qx,Me,qc,ek\nq>h\n": "nodes",
        "xB,qM,BY,qx,Me,qc\nq>e\n": "not 2 edges long",    # arms of unequal length
        "xB,qM,ch,qx,Me,q1\nq>h\n": "node label",
    }
    for prompt, why in bad.items():
        with pytest.raises(ValueError, match=why):
            ref.check_star(ref.parse_prompt(prompt), 3, 2)
    assert ref.judge(good, list("qch\n") + ["<99>"]) == (True, True, 3)
    assert ref.judge(good, list("qxB\n")) == (False, True, 3)
    assert ref.judge(good, list("qch") + [None]) == (False, True, 3)
    assert ref.judge(good, list("qchh")) == (False, False, None)
