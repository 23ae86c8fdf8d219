"""Beyond the paper: when does a per-token KL matter? Learning on N+1 digits against what the
policy retains of the comfort zone (problems of 1..N digits), in a regime where RL without a
KL forgets.

Arms: no KL; the standard KL at several coefficients (its frontier: the more it protects, the
less it learns); the prioritized KL (beta 150) at several coefficients. One sweep per arm, every
arm on the same fresh seeds (the same evaluation problems per seed). Each run's end state is a
point (sampled success on N+1, retention); the verdict places each prioritized arm against the
standard KL's frontier, with a bootstrap over seeds:

- above it: it learns like a weak KL and retains like a strong one (the paper's claim);
- on it: it is the standard KL at some weaker coefficient ("only a weaker KL");
- below it: worse than the standard KL at any coefficient.

Before any run, `predictions` writes what the causal map's KL-regularised optimum
(`critkl.analysis.causal.optimum_p_right`) predicts per arm, and what each hypothesis predicts.

Run: `critkl experiment frontier --scale tiny|mini|paper`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import NamedTuple

import numpy as np

from critkl.runs.spec import Sweep, run_sweep
from critkl import statistics
from critkl.analysis import causal
from critkl.infra.outputs import Curve, Output
from critkl.loss_config import DEFAULT_BETA
from experiments import kl_comparison
from experiments.models import pretrained_model, model_name
from experiments.rl_settings import RL_SETTINGS


class Arm(NamedTuple):
    name: str
    kl_coef: float
    beta: float  # 0: the standard KL

    @property
    def kind(self) -> str:
        return "no KL" if self.kl_coef == 0 else "standard" if self.beta == 0 else "prioritized"


def arms(standard: tuple[float, ...], prioritized: tuple[float, ...]) -> tuple[Arm, ...]:
    """No KL, then the standard KL at each coefficient, then the prioritized KL (beta 150)."""
    return ((Arm("no-kl", 0.0, 0.0),)
            + tuple(Arm(f"standard-{c:g}", c, 0.0) for c in standard)
            + tuple(Arm(f"prioritized-{c:g}", c, DEFAULT_BETA) for c in prioritized))


# The RL regime (results/frontier-probes): the scale's RL settings with these changes.
SETTINGS = {
    "tiny": dict(seeds=[0, 1], arms=arms((0.5,), (0.5,)), regime={}),
    "mini": dict(seeds=list(range(1000, 1008)), arms=arms((0.05, 0.1, 0.2, 0.5), (0.5, 1.0, 2.0)),
                 regime=dict(learning_rate=1e-4, iterations=30, eval_every=10)),
    "paper": dict(seeds=list(range(1000, 1009)), arms=arms((0.05, 0.1, 0.2, 0.5), (0.5, 1.0, 2.0)),
                  regime=dict(learning_rate=1e-4, iterations=30, eval_every=10)),
}

LEARNING = "eval/sampled_success"  # sampled success on N+1 (the paper's metric)
# Retention axes of the verdict (higher: retained more), the first deciding
# (results/frontier-mini/PREDICTION.md): sampled success at N+N digits, where the probes saw
# forgetting first, and the log-likelihood of correct comfort-zone answers.
RETENTION_AXES = {"retention/sampled_n_digits": "sampled success on N+N digits",
                  "retention/logp_correct": "log-likelihood of correct comfort answers (nats)"}
# Reported beside them, each run's value at the end.
END_KEYS = (LEARNING, "eval/pass_at_1", *RETENTION_AXES, "retention/sampled_comfort",
            "eval/comfort_pass_at_1", "retention/kl", "retention/kl_w_high",
            "retention/kl_w_low", "retention/logp_correct", "causal/p_right")


# ---------------------------------------------------------------------------------------------
# Predictions from the causal map, before the runs


def predicted_p_right(rows: list[dict], kl_coef: float, beta: float, map_beta: float) -> float:
    """Mean over the map's causally critical decisions of p(right) at the KL-regularised
    optimum at `kl_coef`, each decision's KL weighted by its prioritized weight at `beta`
    (`causal.kl_weight`; beta 0: weight 1, the standard KL). map_beta: the map's own beta."""
    values = [causal.optimum_p_right(row, kl_coef,
                                     causal.kl_weight(row, beta, map_beta) if beta else 1.0)
              for row in rows if row.get("critical")]
    return float(np.mean(values))


def equivalent_standard_coef(rows: list[dict], kl_coef: float, beta: float,
                             map_beta: float) -> float:
    """The standard KL's coefficient whose optimum mean p(right) at the critical decisions
    equals the prioritized KL's at `kl_coef` and `beta` (bisection in log coefficient)."""
    target = predicted_p_right(rows, kl_coef, beta, map_beta)
    low, high = math.log(1e-6), math.log(kl_coef)
    for _ in range(60):
        middle = (low + high) / 2
        if predicted_p_right(rows, math.exp(middle), 0.0, map_beta) > target:
            low = middle
        else:
            high = middle
    return math.exp((low + high) / 2)


def predictions(rows: list[dict], arm_list: tuple[Arm, ...], map_beta: float) -> str:
    """Markdown: per arm, the optimum's mean p(right) at the causal critical decisions and the
    map's p(right) before RL; per prioritized arm (weights at its own beta), the standard
    coefficient that learns like it, and where each hypothesis puts its end point."""
    before = float(np.mean([row["p_right"] for row in rows if row.get("critical")]))
    count = sum(1 for row in rows if row.get("critical"))
    lines = [f"Mean p(right) at the {count} causally critical decisions before RL: "
             f"{before:.3f}.", "",
             "| arm | optimum p(right) at the critical decisions | learns like |",
             "|---|---|---|"]
    for arm in arm_list:
        if arm.kind == "no KL":
            lines.append(f"| {arm.name} | 1.000 (no penalty: the better side at every "
                         "decision) | itself |")
            continue
        p = predicted_p_right(rows, arm.kl_coef, arm.beta, map_beta)
        like = "itself"
        if arm.kind == "prioritized":
            coef = equivalent_standard_coef(rows, arm.kl_coef, arm.beta, map_beta)
            like = f"the standard KL at {coef:.3g}"
        lines.append(f"| {arm.name} | {p:.3f} | {like} |")
    lines += ["", "Where each hypothesis puts a prioritized arm at coefficient c, whose critical "
              "decisions learn like the standard KL at c' < c (the table):", "",
              "- **per-token KL** (the paper): learning like the standard KL at c', retention "
              "like the standard KL at c (routine tokens, about 90% of them, keep a weight near "
              "1): above the standard KL's frontier;",
              "- **only a weaker KL**: learning and retention both like the standard KL at "
              "some one coefficient: on the frontier."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The frontier and the verdict


def end_values(runs: list[dict], arm_list: tuple[Arm, ...], seeds: list[int], key: str
               ) -> np.ndarray:
    """[arms, seeds]: each run's `key` at the end of training."""
    final = {(run["setting"], run["seed"]): run["curve"][key][-1] for run in runs}
    return np.array([[final[(arm.name, seed)] for seed in seeds] for arm in arm_list])


def frontier_members(learning: np.ndarray, retention: np.ndarray, kinds: list[str]) -> list[int]:
    """The standard KL's frontier: the indices of the no-KL and standard-KL mean points
    [arms] that no other of them beats on both axes (its upper envelope), in order of
    learning."""
    candidates = [i for i, kind in enumerate(kinds) if kind in ("no KL", "standard")]
    on_frontier = [i for i in candidates if not any(
        learning[j] >= learning[i] and retention[j] >= retention[i]
        and (learning[j], retention[j]) != (learning[i], retention[i]) for j in candidates)]
    return sorted(on_frontier, key=lambda i: learning[i])


def frontier_gap(learning: np.ndarray, retention: np.ndarray, kinds: list[str]) -> np.ndarray:
    """Per arm: its retention minus the standard KL's frontier's (`frontier_members`, joined
    linearly, flat beyond its ends) at its learning, from mean points [arms]."""
    order = frontier_members(learning, retention, kinds)
    return retention - np.interp(learning, learning[order], retention[order])


def verdicts(learning: np.ndarray, retention: np.ndarray, arm_list: tuple[Arm, ...],
             resamples: int = statistics.BOOTSTRAP_RESAMPLES) -> dict[str, dict]:
    """Per prioritized arm: its gap above the standard KL's frontier (`frontier_gap` of the
    mean points over seeds), a 95% bootstrap interval resampling seeds jointly across arms
    (the same seed: the same problems), and "above", "on" or "below"."""
    kinds = [arm.kind for arm in arm_list]
    gap = frontier_gap(learning.mean(axis=1), retention.mean(axis=1), kinds)
    seeds = learning.shape[1]
    draws = np.random.default_rng(0).integers(0, seeds, (resamples, seeds))
    boot = np.array([frontier_gap(learning[:, d].mean(axis=1), retention[:, d].mean(axis=1),
                                  kinds) for d in draws])
    table = {}
    for index, arm in enumerate(arm_list):
        if arm.kind != "prioritized":
            continue
        low, high = np.percentile(boot[:, index], [2.5, 97.5])
        place = "above" if low > 0 else "below" if high < 0 else "on"
        table[arm.name] = {"gap": float(gap[index]), "low": float(low), "high": float(high),
                           "place": place}
    return table


def paired_comparisons(values: np.ndarray, arm_list: tuple[Arm, ...]) -> list[dict]:
    """Each prioritized arm minus the standard KL at the same coefficient (where run), and
    minus no KL, paired by seed: mean, bootstrap interval, sign-flip p-value, Holm-adjusted
    over the family. values [arms, seeds]."""
    index = {arm.name: i for i, arm in enumerate(arm_list)}
    rows = []
    for arm in arm_list:
        if arm.kind != "prioritized":
            continue
        for other in (f"standard-{arm.kl_coef:g}", "no-kl"):
            if other in index:
                differences = values[index[arm.name]] - values[index[other]]
                mean, low, high = statistics.mean_interval(differences)
                rows.append({"arm": arm.name, "against": other, "mean": mean, "low": low,
                             "high": high, "p": statistics.paired_test(differences)})
    for row, adjusted in zip(rows, statistics.holm([row["p"] for row in rows])):
        row["p_holm"] = adjusted
    return rows


def _interval(values: np.ndarray) -> str:
    mean, low, high = statistics.mean_interval(values)
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def markdown(ends: dict[str, np.ndarray], arm_list: tuple[Arm, ...], seeds: list[int],
             placed: dict[str, dict]) -> str:
    """The end-state table (mean and bootstrap interval over seeds), the paired comparisons of
    both axes and the verdict per prioritized arm (`placed`: per retention axis, `verdicts`)."""
    keys = [key for key in END_KEYS if key in ends]
    lines = [f"Seeds: {', '.join(map(str, seeds))}. Mean over seeds [95% bootstrap interval].",
             "", "| arm | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for i, arm in enumerate(arm_list):
        lines.append(f"| {arm.name} | " + " | ".join(_interval(ends[k][i]) for k in keys) + " |")
    for key in (LEARNING, *RETENTION_AXES):
        lines += ["", f"Paired by seed, {key} (p: sign-flip test, Holm over the family):",
                  "", "| arm | against | difference | p | p (Holm) |", "|---|---|---|---|---|"]
        for row in paired_comparisons(ends[key], arm_list):
            lines.append(f"| {row['arm']} | {row['against']} | {row['mean']:+.4f} "
                         f"[{row['low']:+.4f}, {row['high']:+.4f}] | "
                         f"{row['p']:.4f} | {row['p_holm']:.4f} |")
    for axis in RETENTION_AXES:
        lines += ["", f"Against the standard KL's frontier ({axis} against {LEARNING}):", "",
                  "| arm | retention above the frontier | place |", "|---|---|---|"]
        for name, row in placed[axis].items():
            lines.append(f"| {name} | {row['gap']:+.4f} [{row['low']:+.4f}, "
                         f"{row['high']:+.4f}] | {row['place']} |")
    return "\n".join(lines)


def plot(ends: dict[str, np.ndarray], arm_list: tuple[Arm, ...], output: Output, digits: int,
         axis: str, name: str):
    """`name` (PNG): each arm's mean end point (learning, retention on `axis`) with bootstrap
    intervals, by kind; the standard KL's frontier (`frontier_members`) drawn as a line."""
    kinds = [arm.kind for arm in arm_list]
    points = [(statistics.mean_interval(ends[LEARNING][i]), statistics.mean_interval(ends[axis][i]))
              for i in range(len(arm_list))]

    def curve(label, members, style, color, intervals=True):
        chosen = sorted((points[i] for i in members), key=lambda point: point[0][0])
        low, high = ([y[k] for _, y in chosen] if intervals else None for k in (1, 2))
        return Curve(label, [x[0] for x, _ in chosen], [y[0] for _, y in chosen], low, high,
                     style, color)

    learning, retention = (np.array([point[k][0] for point in points]) for k in (0, 1))
    envelope = curve("the standard KL's frontier (upper envelope)",
                     frontier_members(learning, retention, kinds), "-", "C0", intervals=False)
    curves = [curve(label, [i for i, kind in enumerate(kinds) if kind == wanted], style, color)
              for label, wanted, style, color in (
                  ("no KL", "no KL", "s", "C2"), ("standard KL", "standard", "o", "C0"),
                  (f"prioritized KL, beta={DEFAULT_BETA:g}", "prioritized", "-^", "C3"))]
    output.plot(name, curves + [envelope],
                title="Learning against retention: each arm's end point, mean over seeds",
                xlabel=f"sampled success on {digits} digits (end of RL)",
                ylabel=f"{RETENTION_AXES[axis]} (retention)")


def run(scale: str, output: Output, work_dir, print_fn=print) -> dict:
    plan, n = SETTINGS[scale], kl_comparison.N[scale]
    pre_config, params = pretrained_model(scale, n, work_dir, print_fn)
    settings = dataclasses.replace(RL_SETTINGS[scale], **plan["regime"])
    keys = kl_comparison.causal_keys(scale, params, pre_config, output, print_fn)
    record = json.loads((output.folder / "critical.json").read_text())
    rows = record["rows"]
    if any(row.get("critical") for row in rows):
        output.markdown("prediction.md",
                        predictions(rows, plan["arms"], record["settings"]["beta"]))
    config = dataclasses.replace(settings.config(n, 1), causal_keys=keys)
    runs = []
    for index, arm in enumerate(plan["arms"]):
        print_fn(f"\n== arm {index + 1}/{len(plan['arms'])}: {arm.name}, "
                 f"{len(plan['seeds'])} seeds")
        result = run_sweep(Sweep(model_name("addition", scale, n), config, settings.hyper(),
                                 plan["seeds"], {"kl_coef": [arm.kl_coef], "beta": [arm.beta]}),
                           output.folder / "rl" / arm.name, model=(pre_config, params),
                           print_fn=print_fn)
        runs += [{**run, "setting": arm.name, "name": f"{arm.name},seed={run['seed']}"}
                 for run in result["runs"]]
    ends = {key: end_values(runs, plan["arms"], plan["seeds"], key)
            for key in END_KEYS if key in runs[0]["curve"]}
    placed = {axis: verdicts(ends[LEARNING], ends[axis], plan["arms"])
              for axis in RETENTION_AXES}
    table = markdown(ends, plan["arms"], plan["seeds"], placed)
    output.markdown("frontier.md", table)
    for axis, name in zip(RETENTION_AXES, ("frontier.png", "frontier_likelihood.png")):
        plot(ends, plan["arms"], output, n + 1, axis, name)
    output.json("frontier.json", {
        "settings": dataclasses.asdict(settings), "n": n, "seeds": plan["seeds"],
        "arms": [arm._asdict() for arm in plan["arms"]],
        "ends": {key: value.tolist() for key, value in ends.items()},
        "verdicts": placed})
    print_fn(table)
    return {"runs": runs}

