"""The verdicts of the main job and of the frontier experiment, and the frontier's predictions,
on constructed inputs with known answers."""

import numpy as np
import pytest

from critkl.config import STANDARD_KL
from experiments import frontier, main

ARMS = frontier.arms((0.1, 1.0, 10.0), (1.0, 5.0, 10.0))


def _row(p_right, weight, right, wrong, critical=True):
    return {"p_right": p_right, "kl_weight": weight, "success_right_sampled": right,
            "success_wrong_sampled": wrong, "critical": critical}


def test_arms_in_order_and_kinds():
    assert [a.name for a in ARMS] == ["no-kl", "standard-0.1", "standard-1", "standard-10",
                                      "prioritized-1", "prioritized-5", "prioritized-10"]
    assert [a.kind for a in ARMS] == ["no KL"] + ["standard"] * 3 + ["prioritized"] * 3


def test_a_shared_weight_is_a_coefficient_times_that_weight():
    """When every critical decision has weight w, the prioritized KL at c is the standard KL
    at c * w at those decisions; a non-critical row changes nothing."""
    rows = [_row(0.5, 0.1, 0.6, 0.1), _row(0.8, 0.1, 0.7, 0.3), _row(0.2, 0.9, 0.9, 0.0, False)]
    for coef in (0.5, 2.0, 5.0):
        assert frontier.equivalent_standard_coef(rows, coef, 150.0, 150.0) == pytest.approx(
            coef * 0.1, rel=1e-6)
        assert frontier.predicted_p_right(rows, coef, 150.0, 150.0) == pytest.approx(
            frontier.predicted_p_right(rows, coef * 0.1, 0.0, 150.0))
    # Directly: p * e^{dq/(c w)} / (p e^{dq/(c w)} + 1 - p), dq = 2 (right - wrong).
    expected = np.mean([0.5 * np.exp(1.0 / 0.1) / (0.5 * np.exp(1.0 / 0.1) + 0.5),
                        0.8 * np.exp(0.8 / 0.1) / (0.8 * np.exp(0.8 / 0.1) + 0.2)])
    assert frontier.predicted_p_right(rows, 1.0, 150.0, 150.0) == pytest.approx(expected)
    assert "prioritized-5" in frontier.predictions(rows, ARMS, 150.0)


def test_each_prioritized_arm_is_predicted_at_its_own_beta():
    """With per-problem certainties, beta 500 weights a decision by mean(c ** 500), so its
    optimum moves further from the reference than beta 150's (weights are smaller)."""
    rows = [dict(_row(0.5, None, 0.6, 0.1), certainties=[0.99, 0.995]),
            dict(_row(0.7, None, 0.8, 0.2), certainties=[0.98, 0.999])]
    at = {beta: frontier.predicted_p_right(rows, 5.0, beta, 150.0) for beta in (150.0, 500.0)}
    weights = {beta: [np.mean(np.array(r["certainties"]) ** beta) for r in rows]
               for beta in (150.0, 500.0)}
    for beta in at:
        tilt = [np.exp(2 * (r["success_right_sampled"] - r["success_wrong_sampled"]) / (5.0 * w))
                for r, w in zip(rows, weights[beta])]
        expected = np.mean([r["p_right"] * x / (r["p_right"] * x + 1 - r["p_right"])
                            for r, x in zip(rows, tilt)])
        assert at[beta] == pytest.approx(expected)
    assert at[500.0] > at[150.0]


def test_frontier_gap_against_a_straight_frontier():
    """No KL and the standard KL on retention = 1 - learning: a prioritized point's gap is its
    retention minus (1 - its learning); beyond the frontier's ends, the end's retention."""
    learning = np.array([0.8, 0.6, 0.4, 0.2, 0.5, 0.3, 0.9])
    retention = np.array([0.2, 0.4, 0.6, 0.8, 0.8, 0.7, 0.1])
    gap = frontier.frontier_gap(learning, retention, [a.kind for a in ARMS])
    np.testing.assert_allclose(gap[:4], 0, atol=1e-12)
    np.testing.assert_allclose(gap[4:], [0.8 - 0.5, 0.7 - 0.7, 0.1 - 0.2], atol=1e-12)


def test_frontier_gap_leaves_out_a_dominated_point():
    """No KL below and left of a standard arm (it learned less and retained less) does not pull
    the frontier down: the gap is taken against the other standard arms' line."""
    learning = np.array([0.5, 0.6, 0.4, 0.2, 0.5, 0.3, 0.9])
    retention = np.array([0.1, 0.4, 0.6, 0.8, 0.5, 0.7, 0.1])
    gap = frontier.frontier_gap(learning, retention, [a.kind for a in ARMS])
    np.testing.assert_allclose(gap[4:], [0.5 - 0.5, 0.7 - 0.7, 0.1 - 0.4], atol=1e-12)


def test_verdicts_place_arms_above_on_and_below():
    rng = np.random.default_rng(3)
    seeds = 8
    means_learning = np.array([0.8, 0.6, 0.4, 0.2, 0.5, 0.5, 0.5])
    means_retention = np.array([0.2, 0.4, 0.6, 0.8, 0.8, 0.5, 0.2])  # above, on, below
    learning = means_learning[:, None] + rng.normal(0, 0.01, (7, seeds))
    retention = means_retention[:, None] + rng.normal(0, 0.01, (7, seeds))
    table = frontier.verdicts(learning, retention, ARMS, resamples=2000)
    assert [table[name]["place"] for name in ("prioritized-1", "prioritized-5",
                                               "prioritized-10")] == ["above", "on", "below"]
    assert table["prioritized-1"]["low"] < 0.3 < table["prioritized-1"]["high"]


def test_paired_comparisons_are_holm_adjusted():
    values = np.tile(np.linspace(0, 0.6, 7)[:, None], (1, 8))
    values += np.random.default_rng(0).normal(0, 0.02, values.shape)
    rows = frontier.paired_comparisons(values, ARMS)
    assert [(r["arm"], r["against"]) for r in rows] == [
        ("prioritized-1", "standard-1"), ("prioritized-1", "no-kl"),
        ("prioritized-5", "no-kl"), ("prioritized-10", "standard-10"),
        ("prioritized-10", "no-kl")]
    for row in rows:
        assert row["p_holm"] >= row["p"]
        assert row["low"] <= row["mean"] <= row["high"]
    assert all(row["p"] == pytest.approx(2 / 256) for row in rows)


def _sweep(differences, base=0.3):
    runs = []
    for seed, difference in enumerate(differences):
        runs.append({"setting": STANDARD_KL, "seed": seed,
                     "curve": {"eval/sampled_success": [0.1, base]}})
        runs.append({"setting": "beta=150", "seed": seed,
                     "curve": {"eval/sampled_success": [0.1, base + difference]}})
    return {"runs": runs}


def test_main_verdict_is_decisive_only_when_the_exact_test_is():
    shown = main.verdict(_sweep([0.10, 0.05, 0.20, 0.08, 0.12, 0.03]))
    assert "+9.7 points" in shown and "6 favour it, 0 the standard KL" in shown
    assert "p = 0.031" in shown and "above the standard KL (p < 0.05)" in shown
    mixed = main.verdict(_sweep([0.10, -0.05, 0.20, 0.08, -0.12, 0.03]))
    assert "4 favour it, 2 the standard KL" in mixed and "not shown at this budget" in mixed
    below = main.verdict(_sweep([-0.1] * 6))
    assert "below the standard KL (p < 0.05)" in below


def test_frontier_tables_and_plots_for_both_retention_axes(tmp_path):
    from critkl.infra.outputs import Output

    rng = np.random.default_rng(5)
    ends = {key: rng.random((len(ARMS), 8)) for key in frontier.END_KEYS}
    seeds = list(range(1000, 1008))
    placed = {axis: frontier.verdicts(ends[frontier.LEARNING], ends[axis], ARMS)
              for axis in frontier.RETENTION_AXES}
    table = frontier.markdown(ends, ARMS, seeds, placed)
    for axis in frontier.RETENTION_AXES:
        assert f"Against the standard KL's frontier ({axis}" in table
    assert table.count("| prioritized-5 | standard-5 |") == 0  # no standard arm at 5
    assert table.count("| prioritized-10 | standard-10 |") == 1 + len(frontier.RETENTION_AXES)
    output = Output(tmp_path)
    frontier.plot(ends, ARMS, output, 4, "retention/logp_correct", "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
