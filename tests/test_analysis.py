import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critkl import statistics
from critkl.analysis import certainty as token_stats
from critkl.config import model_preset
from critkl.model import init_params
from critkl.tasks import addition
from critkl.tasks.addition import Addition, tokenizer

TINY = model_preset("tiny")


def test_delta_certainty_hand_example():
    certainty = jnp.array([[1.0, 0.9, 0.8, 0.5, 0.0]])
    decisions = jnp.array([[False, True, True, True, False]])
    delta = token_stats.delta_certainty(certainty, decisions)
    # 0.9 - mean(0.8, 0.5); 0.8 - mean(0.9, 0.5); 0.5 - mean(0.9, 0.8); 0 outside decisions
    np.testing.assert_allclose(delta, [[0.0, 0.25, 0.1, -0.35, 0.0]], atol=1e-6)


def test_episode_stats_hand_example():
    certainty = jnp.array([[1.0, 0.9, 0.8, 0.5, 0.0], [1.0, 0.6, 0.6, 0.6, 0.6]])
    decisions = jnp.array([[False, True, True, True, False], [False, True, True, True, True]])
    critical = jnp.array([[False, False, False, True, True], [False] * 5])
    stats = token_stats.episode_stats(certainty, decisions, critical)
    # Position 4 of episode 0 is critical but not a decision: ignored.
    np.testing.assert_allclose(stats.critical, [-0.35, np.nan], atol=1e-6)
    np.testing.assert_allclose(stats.non_critical, [0.175, 0.0], atol=1e-6)
    np.testing.assert_allclose(stats.non_critical_min, [0.1, 0.0], atol=1e-6)
    np.testing.assert_allclose(stats.critical_certainty, [0.5, np.nan], atol=1e-6)
    np.testing.assert_allclose(stats.non_critical_certainty, [0.85, 0.6], atol=1e-6)


def test_summarize_ignores_missing_values():
    summary = statistics.summarize([1.0, np.nan, 3.0])
    assert summary == {"mean": 2.0, "std": 1.0, "count": 2}
    assert statistics.summarize([np.nan])["count"] == 0


def test_token_certainty_is_aligned_with_the_predicted_token():
    params = init_params(jax.random.key(0), TINY)
    tokens = addition.render(addition.operands_from_ints([(12, 345), (7, 89)], 3)).tokens
    values = np.asarray(token_stats.token_certainty(params, TINY, tokens, temperature=2.0))
    from critkl.model import GPT

    logits, _ = GPT(TINY).apply({"params": params}, tokens)
    logits = np.asarray(logits, np.float64) / 2.0
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = 1 + np.log(probs.max(-1)) / np.log(tokenizer.VOCAB_SIZE)  # from position t - 1
    assert values.shape == tokens.shape
    np.testing.assert_allclose(values[:, 0], 1.0)
    np.testing.assert_allclose(values[:, 1:], expected[:, :-1], atol=1e-5)


def test_decision_mask_covers_the_target():
    episodes = addition.render(addition.operands_from_ints([(128, 367)], 3))
    mask = np.asarray(token_stats.decision_mask(episodes))[0]
    text = tokenizer.decode(np.asarray(episodes.tokens[0])[mask])
    assert text.startswith("\n<scratch>") and text.endswith("4 9 5\n")
    assert not mask[: int(episodes.prompt_length[0])].any()


def test_certainty_table_counts():
    params = init_params(jax.random.key(0), TINY)
    table = token_stats.certainty_table(params, TINY, Addition(1), jax.random.key(1), episodes=6)
    # Every RL problem at n+1 digits has structural critical tokens.
    assert table["structural"]["critical"]["count"] == 6
    assert table["structural"]["non_critical"]["count"] == 6
    # A random model fails every problem, each failure has its first wrong token.
    assert table["greedy_failures"] == 6
    assert table["empirical"]["critical"]["count"] == 6
    markdown = token_stats.certainty_markdown([table])
    assert markdown.count("\n| 1 |") == 3  # Table 1's two rows and p(right) at level 1
    assert set(table["p_right_by_role"]) == {"1", "2"}
    assert "\n| 2 |" in markdown


@pytest.mark.parametrize("task_name", ["addition", "path-star"])
def test_p_right_by_role_against_a_loop_over_tokens(task_name):
    """Each written token's p(right) from a softmax of the model's logits one position at
    a time (numpy), grouped by role in plain Python, against the batched table."""
    from critkl.model import GPT
    from critkl.tasks import registry

    task = registry.make(task_name, 2, 0)
    config = dataclasses.replace(TINY, vocab_size=task.vocabulary.size)
    params = init_params(jax.random.key(3), config)
    episodes = task.render(task.sample_level(jax.random.key(4), 5, 2))
    table = token_stats.p_right_by_role(params, config, task, episodes)
    sums, counts = {}, {}
    for b in range(5):
        start, end = int(episodes.prompt_length[b]), int(episodes.length[b])
        tokens = np.asarray(episodes.tokens[b])
        logits, _ = GPT(config).apply({"params": params}, jnp.asarray(tokens[None, :end - 1]))
        logits = np.asarray(logits[0], np.float64)
        for t in range(start, end):
            probs = np.exp(logits[t - 1] - logits[t - 1].max())
            role = task.role_names[int(episodes.role[b, t])]
            sums[role] = sums.get(role, 0.0) + probs[tokens[t]] / probs.sum()
            counts[role] = counts.get(role, 0) + 1
    assert set(table) == set(counts) and len(counts) >= 3
    for role, count in counts.items():
        assert table[role]["count"] == count
        np.testing.assert_allclose(table[role]["mean"], sums[role] / count, rtol=1e-4)


VOCABULARY = Addition.vocabulary
TOKENS = tokenizer.encode("[1,2]\n<a>")
CERTAINTY = np.array([0.95, 0.2, 0.95, 0.95, 0.95, 0.95, 0.95, 0.5, 0.95])


def test_coloured_terminal_colours_each_token():
    text = token_stats.coloured_terminal(VOCABULARY, TOKENS, CERTAINTY, 0, len(TOKENS))
    assert text.count("\x1b[48;2;") == len(TOKENS)
    assert "\x1b[48;2;255;0;40m" in text  # the least certain (0.2, the floor): red
    assert "\x1b[48;2;31;200;40m" in text  # 0.95 on the scale 0.2..1: nearly green
    assert text.count("\n") == 1


def test_colour_scale_reaches_red_at_the_least_certain_token():
    assert token_stats.colour_floor(np.array([0.69, 0.9, 1.0])) == 0.65
    assert token_stats.colour_floor(np.array([0.99, 1.0])) == 0.9
    high = np.array([0.99, 0.995, 1.0])
    page = token_stats.coloured_html(VOCABULARY, [("x", tokenizer.encode("1,2"), high, np.zeros(3, bool), 0, 3)])
    assert "rgb(51,200,40)" in page  # 0.99 on the scale 0.9..1, not green as on 0..1


def test_coloured_html_escapes_titles_and_marks_critical_tokens():
    critical = np.zeros(len(TOKENS), bool)
    critical[[1, 3]] = True
    page = token_stats.coloured_html(VOCABULARY, [("N=3 <first>", TOKENS, CERTAINTY, critical, 0, len(TOKENS))])
    assert "N=3 &lt;first&gt;" in page and "&lt;" in page and "<a>" not in page
    assert page.count("<span") == len(TOKENS)
    assert page.count('<span class="critical"') == 2
    assert 'title="certainty 0.2000 (critical)">1<' in page


def test_markdown_episode_marks_uncertain_tokens():
    text = token_stats.certainty_markdown_episode(VOCABULARY, TOKENS, CERTAINTY, 0, len(TOKENS), threshold=0.9)
    assert text == "\\[**1**(0.20),2\\]  \n&lt;**a**(0.50)\\>"
