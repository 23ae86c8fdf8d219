"""The plots of an RL sweep's results (`critkl plot`, and the KL experiments): per setting,
each metric against RL iterations, the mean and 95% interval over seeds."""

from __future__ import annotations

import numpy as np

from critkl.runs import finetuning
from critkl.infra.outputs import Curve, Output
from critkl.statistics import mean_interval

SWEEP_PLOTS = (  # file, metric, what it shows
    ("causal_p_right.png", "causal/p_right", "p(right token) at the causal critical tokens"),
    ("critical_commas.png", "critical/p_right_comma", "p(right token) at structural critical commas"),
    ("critical_digits.png", "critical/p_right_digit", "p(right token) at structural critical digits"),
    ("sampled_success.png", "eval/sampled_success", "Success sampled at the policy temperature"),
    ("pass_at_1.png", "eval/pass_at_1", "Greedy pass@1"),
    ("comfort_zone.png", "eval/comfort_pass_at_1", "Greedy pass@1 in the comfort zone"),
    ("kl_critical_like.png", "loss/kl_w_low", "KL to the reference at tokens of weight w < 0.1"),
    ("kl_routine.png", "loss/kl_w_high", "KL to the reference at tokens of weight w >= 0.9"),
    ("retention_sampled.png", "retention/sampled_comfort",
     "Retention: success sampled at the policy temperature on 1..N digits"),
    ("retention_kl.png", "retention/kl", "Retention: KL to the reference on correct comfort-zone "
     "episodes"),
)


def setting_curves(results: dict, key: str, label=None) -> list[Curve]:
    """Per setting of a sweep: `key` against iterations, mean and 95% interval over seeds.
    label(setting, values) names a curve, values being the setting's swept hyperparameters
    (`finetuning.swept_values`); default: the setting. Training metrics (one point per
    evaluation period, none before training) are drawn at the period's last iteration."""
    runs = results["runs"]
    values_of = {}
    if label is not None:
        values_of = dict(zip((run["setting"] for run in runs), finetuning.swept_values(runs)))
    curves = []
    for setting in finetuning.settings_in_order(run["setting"] for run in runs):
        members = [run["curve"] for run in runs if run["setting"] == setting]
        values = np.array([curve[key] for curve in members])  # [seeds, points]
        stats = np.array([mean_interval(values[:, j]) for j in range(values.shape[1])])
        iterations = members[0]["iteration"]
        name = setting if label is None else label(setting, values_of[setting])
        curves.append(Curve(name, iterations[len(iterations) - values.shape[1]:], *stats.T))
    return curves


def _title(digits: int, results: dict, what: str) -> str:
    seeds = len({run["seed"] for run in results["runs"]})
    return f"{what}\nRL on {digits} digits, {seeds} seeds, mean and 95% interval"


def plot_sweep(digits: int, results: dict, output: Output) -> None:
    """Figures 4, 6 and 7: per setting, each metric of `SWEEP_PLOTS` that the results hold."""
    curve = results["runs"][0]["curve"]
    for name, key, what in SWEEP_PLOTS:
        if key not in curve:
            continue
        is_kl = key.startswith("loss/") or key == "retention/kl"
        output.plot(name, setting_curves(results, key, finetuning.kl_label),
                    title=_title(digits, results, what), xlabel="RL iteration",
                    ylabel="KL (nats per token)" if is_kl else "rate",
                    ylim=None if is_kl else (-0.02, 1.02))
