"""The task interface: every registered task keeps the contract the trainers rely on (checked
against plain loops over its own outputs), addition through the interface is the addition
environment unchanged, and a bad task name or a model of another task is refused clearly."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critkl.config import PretrainConfig, RLConfig, model_preset
from critkl.tasks import addition, decisions, registry
from critkl.tasks.addition import Addition
from critkl.tasks.base import EOS_ID, PAD_ID, MAX_VOCAB_SIZE

# The character-level tasks (critkl's own vocabularies, packed in pre-training). The
# token-level short-addition, whose vocabulary is a pre-trained model's tokenizer, keeps its
# own contract in tests/test_real_lm.py.
TASKS = sorted(name for name in registry.TASKS if name != "short-addition")


def small(name: str):
    """The task at levels 1..2, RL on 3."""
    return registry.make(name, 2, 1)


@pytest.mark.parametrize("name", TASKS)
def test_vocabulary_and_roles(name):
    task_class = registry.task_class(name)
    vocabulary = task_class.vocabulary
    assert vocabulary.size <= MAX_VOCAB_SIZE
    assert task_class.role_names[0] == "prompt"
    text = vocabulary.characters
    assert vocabulary.decode(vocabulary.encode(text)) == text
    assert vocabulary.decode(np.r_[vocabulary.encode(text[:2]), EOS_ID, 2]) == text[:2]


def first_stop(task, tokens, prompt):
    """Where the streaming stop rule, fed each row's tokens after its prompt one at a time
    (as the sampler feeds it), first ends the episode: [B] (-1: never)."""
    tokens, prompt = jnp.asarray(tokens), jnp.asarray(prompt)

    def step(state, t):
        generated = t >= prompt
        new_state, stop = task.stop_rule(state, tokens[:, t])
        return jnp.where(generated, new_state, state), stop & generated

    _, stops = jax.lax.scan(step, jnp.zeros(tokens.shape[0], jnp.int32),
                            jnp.arange(tokens.shape[1]))
    stops = np.asarray(stops).T  # [B, T]
    return np.where(stops.any(axis=1), stops.argmax(axis=1), -1)


@pytest.mark.parametrize("name", TASKS)
def test_episodes_keep_the_contract(name):
    """Shapes and ranges of rendered episodes; the correct episode scores a success and the
    streaming stop rule ends it at `score`'s last token; a cut one fails, and so do random
    ids (any, out of the vocabulary too) after the prompt, without error; the prompt-only
    role 0 is exactly the prompt."""
    task = small(name)
    for problems in (task.sample_pretraining(jax.random.key(0), 64),
                     task.sample_rl(jax.random.key(1), 64),
                     task.sample_level(jax.random.key(2), 64, task.max_level)):
        episodes = jax.jit(task.render)(problems)
        tokens = np.asarray(episodes.tokens)
        length, prompt = np.asarray(episodes.length), np.asarray(episodes.prompt_length)
        assert tokens.shape == (64, task.max_episode_length())
        assert length.max() <= task.max_episode_length()
        assert length.min() >= task.shortest_episode_length()
        assert prompt.max() <= task.prompt_width()
        role = np.asarray(episodes.role)
        for b in range(64):
            assert (tokens[b, :length[b]] >= 2).all() and (tokens[b, length[b]:] == PAD_ID).all()
            assert (role[b, :prompt[b]] == 0).all() and (role[b, prompt[b]:length[b]] != 0).all()
        outcome = task.score(episodes.tokens, episodes)
        assert np.asarray(outcome.success).all() and np.asarray(outcome.terminated).all()
        np.testing.assert_array_equal(outcome.last, length - 1)
        np.testing.assert_array_equal(first_stop(task, tokens, prompt), length - 1)
        cut = np.where(np.arange(tokens.shape[1])[None] < (length - 2)[:, None], tokens, PAD_ID)
        assert not np.asarray(task.score(jnp.asarray(cut), episodes).success).any()
        # Any ids after the prompt (out of the vocabulary too): scored, never an error.
        noise = np.random.default_rng(4).integers(-5, 200, tokens.shape)
        outcome = task.score(jnp.asarray(np.where(role == 0, tokens, noise)), episodes)
        last = np.asarray(outcome.last)
        assert not np.asarray(outcome.success).any()
        assert ((last >= 0) & (last < tokens.shape[1])).all()


@pytest.mark.parametrize("name", TASKS)
def test_decision_keys_round_trip_and_mark_their_positions(name):
    task = small(name)
    episodes = task.render(task.sample_level(jax.random.key(5), 16, task.max_level))
    found = decisions.decision_keys(task, episodes)
    keys = sorted({key for row in found for key in row.values()}, key=str)
    assert keys, "a task needs decisions for the causal map"
    for key in keys:
        assert task.key_of_code(task.key_code(key)) == key
        assert isinstance(task.key_label(key, "x"), str)
    chosen = tuple(keys[:3])
    mask = np.asarray(decisions.at_keys(task, task.decision_codes(episodes), chosen))
    for b, row in enumerate(found):
        assert set(np.nonzero(mask[b])[0]) == {t for t, key in row.items() if key in chosen}
    with pytest.raises(ValueError):
        task.key_code(("no such key",))


@pytest.mark.parametrize("name", TASKS)
def test_tasks_are_static_jit_arguments(name):
    """Equal parameters are equal and hash alike (one compilation per task, not per call)."""
    assert small(name) == small(name) and hash(small(name)) == hash(small(name))
    assert small(name).at_level(5).max_level == 5


def test_rl_level_is_the_papers_n_plus_1_except_path_star():
    """The level RL, the causal map and the detectors take by default."""
    assert [registry.make(name, 3).rl_level for name in ("addition", "multiplication",
                                                         "path-star")] == [4, 4, 3]
    # independent of the arrays' width: a pre-training task (extra 0) has the same RL level
    assert registry.make("addition", 3, 0).rl_level == registry.make("addition", 3, 2).rl_level


@pytest.mark.parametrize("name", TASKS)
def test_bad_levels_name_the_field(name):
    top = registry.task_class(name).max_supported_level
    with pytest.raises(ValueError, match="n=0"):
        registry.make(name, 0)
    with pytest.raises(ValueError, match=rf"n \+ extra.*{top}"):
        registry.make(name, top, 1)
    with pytest.raises(ValueError):
        small(name).problems_from_text(["not a problem at all"])


@pytest.mark.slow  # 12 s: Addition routes every method to critkl.tasks.addition by construction
def test_addition_through_the_interface_is_the_environment():
    task = Addition(3, 2)
    rng = jax.random.key(7)
    pairs = ((task.sample_pretraining(rng, 50), addition.sample_pretraining(rng, 50, 3, 5)),
             (task.sample_rl(rng, 50), addition.sample_rl(rng, 50, 3, 2, 5)),
             (task.sample_level(rng, 50, 4), addition.sample_identical(rng, 50, 4, 5)))
    for mine, theirs in pairs:
        for x, y in zip(mine, theirs):
            np.testing.assert_array_equal(x, y)
    episodes = task.render(pairs[1][0])
    np.testing.assert_array_equal(task.critical_positions(episodes),
                                  episodes.list_index >= 3)
    kinds = task.critical_kinds(episodes)
    np.testing.assert_array_equal(kinds["comma"] | kinds["digit"],
                                  task.critical_positions(episodes))
    assert not (kinds["comma"] & kinds["digit"]).any()
    rows = task.problems_from_text(["128+367", "5 60"])
    assert addition.operands_to_ints(rows) == [(128, 367), (5, 60)]
    for bad, message in (("012+3", "leading zero"), ("1+2+3", "two operands"),
                         ("123456+1", "at most 5")):
        with pytest.raises(ValueError, match=message):
            task.problems_from_text([bad])


def test_an_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="task='nope' is not a task: allowed .*addition"):
        registry.make("nope", 3)
    with pytest.raises(ValueError, match="allowed .*addition"):
        PretrainConfig(task="nope")
    with pytest.raises(ValueError, match="allowed .*addition"):
        RLConfig(task="nope")


def test_a_model_of_another_vocabulary_is_refused():
    tiny = model_preset("tiny")
    other = dataclasses.replace(tiny, vocab_size=tiny.vocab_size + 3)
    with pytest.raises(ValueError, match="pre-trained on another task"):
        RLConfig(n=1, extra_digits=1).check_model(other)
    assert PretrainConfig().model_config.vocab_size == Addition.vocabulary.size


def test_task_parameters_reach_the_task_and_bad_ones_are_named():
    config = PretrainConfig(task="path-star", task_params="degree=2", max_digits=3)
    assert config.text_task.degree == 2 and registry.make("path-star", 3).degree == 3
    assert RLConfig(task="path-star", task_params=" degree = 4 ", n=2).text_task.degree == 4
    for text, message in (("deg=2", "takes degree=INTEGER"), ("degree=x", "takes degree"),
                          ("degree=1", "degree=1 is not supported")):
        with pytest.raises(ValueError, match=message):
            PretrainConfig(task="path-star", task_params=text, max_digits=3).text_task
    with pytest.raises(ValueError, match="task 'addition' takes no parameters"):
        PretrainConfig(task_params="degree=2")
