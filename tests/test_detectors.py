"""Tests of critkl.analysis.detectors: precision-recall against a brute-force count, and the scored
tokens against plain-Python labels on a tiny model."""

import jax
import numpy as np
import pytest

from critkl.analysis import detectors
from critkl.runs.models import load_pretrained


def brute_force(confidence, critical, threshold):
    chosen = [i for i, c in enumerate(confidence) if c <= threshold]
    hits = sum(critical[i] for i in chosen)
    return len(chosen) / len(confidence), hits / len(chosen), hits / sum(critical)


def test_precision_recall_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    confidence = np.round(rng.random(300), 2)  # many ties
    critical = rng.random(300) < 0.3 + 0.4 * (confidence < 0.3)
    shares, precision, recall = detectors.precision_recall(confidence, critical)
    for i, threshold in enumerate(np.unique(confidence)):
        np.testing.assert_allclose((shares[i], precision[i], recall[i]),
                                   brute_force(confidence, critical, threshold))
    # Average precision: the precision at each positive, averaged (no ties in this draw).
    distinct = rng.permutation(300) / 300.0
    order = np.argsort(distinct)
    hits = np.cumsum(critical[order])
    expected = np.mean([hits[k] / (k + 1) for k in range(300) if critical[order][k]])
    np.testing.assert_allclose(detectors.average_precision(distinct, critical), expected)
    assert detectors.average_precision(np.where(critical, 0.0, 1.0), critical) == 1.0


def test_average_precision_is_undefined_without_a_critical_token(tmp_path):
    """No positive: None in the table, "undefined" in the markdown and the plot's legend."""
    confidence = np.linspace(0, 1, 50)
    ranked = detectors.Ranked({"certainty": confidence}, np.zeros(50, bool))
    rows = detectors.table(ranked)
    assert rows[0]["average_precision"] is None
    assert "| certainty | undefined |" in detectors.markdown(rows, ranked, "costly")
    assert "0 of them costly" in detectors.markdown(rows, ranked, "costly")
    detectors.plot(ranked, tmp_path / "pr.png", "costly")
    assert (tmp_path / "pr.png").stat().st_size > 0


def test_scored_tokens_carry_the_oracle_labels():
    pre, params = load_pretrained("mini-n3")  # a model that follows the correct path
    keys = ((1, "operand", "a", 0), (1, "operand", "b", 2))
    ranked = detectors.score_tokens(params, pre.model_config, pre.text_task, keys, problems=3, samples=2,
                                    rng=jax.random.key(1))
    assert set(ranked.confidence) == set(detectors.SIGNALS)
    assert all(len(v) == len(ranked.critical) for v in ranked.confidence.values())
    # The oracle's confidence is 0 exactly at the labelled tokens; the first list digits
    # of line 1 copy the prompt, which the model does right: every episode has them.
    np.testing.assert_array_equal(ranked.confidence["oracle"] == 0, ranked.critical)
    assert ranked.critical.sum() >= 3 * 2
    rows = detectors.table(ranked)
    assert [row["signal"] for row in rows] == list(detectors.SIGNALS)
    assert rows[-1]["average_precision"] == 1.0
    assert all(0 <= row["average_precision"] <= 1 for row in rows)


@pytest.mark.slow  # 18 s; the default suite checks rl_level (test_tasks.py) and the labels above
def test_path_star_is_scored_at_its_rl_level():
    """path-star's RL level is its pre-trained N = 5 edges, where path-star-mini-n5 follows the
    edges after a right first step (lookups 0.86-0.97, results/pathstar-mini-n5); at 6 edges
    it fails right after the first step (16 tokens on the correct path in 16 episodes)."""
    pre, params = load_pretrained("path-star-mini-n5")
    ranked = detectors.score_tokens(params, pre.model_config, pre.text_task, (("step", 0),),
                                    problems=8, samples=2, rng=jax.random.key(2))
    np.testing.assert_array_equal(ranked.confidence["oracle"] == 0, ranked.critical)
    assert ranked.critical.sum() >= 14  # one first step in each of 16 episodes
    assert len(ranked.critical) > 3 * ranked.critical.sum()  # paths go on past the first step


def test_at_share_counts_ties_at_their_mean_label():
    confidence = np.array([0.0] * 4 + [1.0] * 16)
    critical = np.array([True] * 4 + [True] * 2 + [False] * 14)
    assert detectors.at_share(confidence, critical, 0.1) == (1.0, 2 / 6)       # 2 of the 4 ties
    precision, recall = detectors.at_share(confidence, critical, 0.5)          # 4 + 6 of 16 ties
    np.testing.assert_allclose((precision, recall), ((4 + 6 * 2 / 16) / 10, (4 + 6 * 2 / 16) / 6))
