"""Beyond the paper (issue 52): is the prioritized KL more than a weaker penalty?

At equal learning on N+1, does the prioritized KL retain more of the comfort zone than a
uniform KL that learns as fast? And if it does, is it *where* the KL is removed that matters,
or *how much*? One sweep per arm, every arm on the same fresh seeds:

- no KL, and the standard KL at a dense grid of coefficients (the frontier it traces);
- the prioritized KL (beta 150) at a few coefficients;
- per prioritized arm, two controls at its coefficient: "uniform", the standard KL at the
  prioritized arm's mean token weight times its coefficient (the same amount of KL, spread
  evenly), and "shuffled", its weights permuted within each episode (`prioritized-shuffled`:
  the same weights at unrelated tokens).

The primary test, fixed before the runs: each prioritized arm's retention minus that of the
standard arm matched to it on learning (chosen from the pilot, results/iso-learning-pilot),
paired by seed, exact sign-flip p, Holm across the prioritized arms, the t interval beside.
Secondary: prioritized minus shuffled and minus uniform, on retention and on learning.

Run: `critkl experiment iso-learning --scale tiny|mini`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from critkl import statistics
from critkl.infra.outputs import Curve, Output
from critkl.loss_config import DEFAULT_BETA, LossConfig, weighting_preset
from critkl.runs.spec import Sweep, run_sweep
from experiments.models import model_name, pretrained_model
from experiments.rl_settings import RL_SETTINGS


class Arm(NamedTuple):
    name: str
    kind: str          # "no KL", "standard", "prioritized", "uniform" or "shuffled"
    kl_coef: float
    beta: float        # 0: every weight 1
    weighting: str     # a preset of loss_config.WEIGHTINGS
    control_of: str = ""  # the prioritized arm a control belongs to


def arms(standard: tuple[float, ...], prioritized: dict[float, float]) -> tuple[Arm, ...]:
    """No KL, the standard KL at each coefficient, and per prioritized coefficient (-> its
    mean token weight, measured in the pilot) the prioritized arm and its two controls."""
    chosen = [Arm("no-kl", "no KL", 0.0, 0.0, "standard")]
    chosen += [Arm(f"standard-{c:g}", "standard", c, 0.0, "standard") for c in standard]
    for c, mean_weight in prioritized.items():
        name = f"prioritized-{c:g}"
        chosen += [Arm(name, "prioritized", c, DEFAULT_BETA, "prioritized"),
                   Arm(f"uniform-{c * mean_weight:.3g}", "uniform", c * mean_weight, 0.0,
                       "standard", name),
                   Arm(f"shuffled-{c:g}", "shuffled", c, DEFAULT_BETA, "prioritized-shuffled",
                       name)]
    return tuple(chosen)


# Per scale: the model level, the regime (RLSettings fields over the scale's), the seeds,
# the arms and, per prioritized arm, the standard arm matched to it on learning.
SETTINGS = {
    "tiny": dict(n=1, seeds=[0, 1], regime={}, arms=arms((0.5, 2.0), {1.0: 0.5}),
                 matched={"prioritized-1": "standard-0.5"}),
}

LEARNING = "eval/sampled_success"
RETENTION = "retention/sampled_n_digits"   # the primary retention rate
END_KEYS = (LEARNING, RETENTION, "retention/sampled_comfort", "retention/kl",
            "retention/logp_correct", "loss/kl")
RAZOR = "loss/kl"  # the KL to the pre-trained model on the new task's own episodes


def end_values(runs: list[dict], arm_list, seeds, key: str) -> np.ndarray:
    """[arms, seeds]: each run's `key` at the end of training."""
    final = {(run["setting"], run["seed"]): run["curve"][key][-1] for run in runs}
    return np.array([[final[(arm.name, seed)] for seed in seeds] for arm in arm_list])


def paired_tests(ends: dict[str, np.ndarray], arm_list, matched: dict[str, str]) -> list[dict]:
    """The primary test (each prioritized arm minus its matched standard arm, retention,
    Holm over the prioritized arms) and the controls (minus uniform, minus shuffled, on
    retention and learning; Holm within each comparison's family)."""
    index = {arm.name: i for i, arm in enumerate(arm_list)}

    def compare(arm, other, key, family):
        differences = ends[key][index[arm]] - ends[key][index[other]]
        mean, low, high = statistics.mean_interval(differences)
        _, t_low, t_high = statistics.t_interval(differences)
        return {"family": family, "arm": arm, "against": other, "metric": key, "mean": mean,
                "low": low, "high": high, "t_low": t_low, "t_high": t_high,
                "p": statistics.paired_test(differences)}

    rows = [compare(arm, other, RETENTION, "primary") for arm, other in matched.items()]
    for arm in arm_list:
        if arm.kind in ("uniform", "shuffled"):
            rows += [compare(arm.control_of, arm.name, key, f"{arm.kind} {key}")
                     for key in (RETENTION, LEARNING)]
    for family in dict.fromkeys(row["family"] for row in rows):
        members = [row for row in rows if row["family"] == family]
        for row, adjusted in zip(members, statistics.holm([row["p"] for row in members])):
            row["p_holm"] = adjusted
    return rows


def markdown(ends: dict[str, np.ndarray], arm_list, seeds, tests: list[dict]) -> str:
    """The end table (mean and t interval over seeds) and the tests (bold: Holm p < 0.05)."""
    keys = [key for key in END_KEYS if key in ends]
    lines = [f"Seeds: {', '.join(map(str, seeds))}. Mean over seeds [95% t interval].", "",
             "| arm | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for i, arm in enumerate(arm_list):
        cells = ["{:.4f} [{:.4f}, {:.4f}]".format(*statistics.t_interval(ends[k][i]))
                 for k in keys]
        lines.append(f"| {arm.name} | " + " | ".join(cells) + " |")
    lines += ["", "Paired by seed: difference [95% bootstrap] t [95% t interval], exact "
              "sign-flip p, Holm within each family; bold: Holm p < 0.05.", "",
              "| family | arm | against | difference | p | p (Holm) |", "|---|---|---|---|---|---|"]
    for row in tests:
        text = (f"{row['mean']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}] t "
                f"[{row['t_low']:+.4f}, {row['t_high']:+.4f}]")
        if row["p_holm"] < 0.05:
            text = f"**{text}**"
        lines.append(f"| {row['family']} | {row['arm']} | {row['against']} | {text} | "
                     f"{row['p']:.4f} | {row['p_holm']:.4f} |")
    return "\n".join(lines)


def plots(ends: dict[str, np.ndarray], arm_list, output: Output, digits: int) -> None:
    """iso_learning.png: learning against retention per arm (t intervals); iso_razor.png:
    retention against the KL on the new task's episodes (one curve for all arms if only the
    amount of KL matters)."""
    styles = {"no KL": ("s", "C2"), "standard": ("-o", "C0"), "prioritized": ("^", "C3"),
              "uniform": ("v", "C1"), "shuffled": ("D", "C4")}
    for name, x_key, xlabel in (
            ("iso_learning.png", LEARNING, f"sampled success on {digits} digits (learning)"),
            ("iso_razor.png", RAZOR, "KL to the pre-trained model on the RL episodes "
                                     "(nats per token, last period)")):
        if x_key not in ends:
            continue
        curves = []
        for kind, (style, color) in styles.items():
            members = sorted((i for i, arm in enumerate(arm_list) if arm.kind == kind),
                             key=lambda i: ends[x_key][i].mean())
            if not members:
                continue
            y = [statistics.t_interval(ends[RETENTION][i]) for i in members]
            curves.append(Curve(kind, [float(ends[x_key][i].mean()) for i in members],
                                [v[0] for v in y], [v[1] for v in y], [v[2] for v in y],
                                style, color))
        output.plot(name, curves, title="Each arm's end point, mean over seeds",
                    xlabel=xlabel, ylabel="sampled success on N+N digits (retention)")


def run(scale: str, output: Output, work_dir, print_fn=print) -> dict:
    plan = SETTINGS[scale]
    n = plan["n"]
    pre_config, params = pretrained_model(scale, n, work_dir, print_fn)
    settings = dataclasses.replace(RL_SETTINGS[scale], **plan["regime"])
    runs = []
    for index, arm in enumerate(plan["arms"]):
        print_fn(f"\n== arm {index + 1}/{len(plan['arms'])}: {arm.name}, "
                 f"{len(plan['seeds'])} seeds")
        fields, values = weighting_preset(arm.weighting)
        config = dataclasses.replace(settings.config(n, 1), loss=LossConfig(**fields))
        grid = {**{k: [v] for k, v in values.items()}, "kl_coef": [arm.kl_coef],
                "beta": [arm.beta]}
        result = run_sweep(Sweep(model_name("addition", scale, n), config, settings.hyper(),
                                 plan["seeds"], grid),
                           output.folder / "rl" / arm.name, model=(pre_config, params),
                           print_fn=print_fn)
        runs += [{**r, "setting": arm.name} for r in result["runs"]]
    ends = {key: end_values(runs, plan["arms"], plan["seeds"], key)
            for key in END_KEYS if key in runs[0]["curve"]}
    tests = paired_tests(ends, plan["arms"], plan["matched"])
    table = markdown(ends, plan["arms"], plan["seeds"], tests)
    output.markdown("iso_learning.md", table)
    plots(ends, plan["arms"], output, n + 1)
    output.json("iso_learning.json", {
        "settings": dataclasses.asdict(settings), "n": n, "seeds": plan["seeds"],
        "arms": [arm._asdict() for arm in plan["arms"]], "matched": plan["matched"],
        "ends": {key: value.tolist() for key, value in ends.items()}, "tests": tests})
    print_fn(table)
    return {"runs": runs}


def power(pilot_differences, effect: float = 0.02) -> dict:
    """The seeds a 2-point retention gap needs at 80% power, from the pilot's paired
    differences (their SD), per comparison and at Holm's worst level over the family."""
    differences = np.asarray(pilot_differences, np.float64)
    sd = float(differences.std(ddof=1))
    return {"paired_sd": sd, "effect": effect,
            "seeds": statistics.seeds_for_power(sd, effect),
            "seeds_holm_2": statistics.seeds_for_power(sd, effect, alpha=0.025)}



# ---------------------------------------------------------------------------------------------
# The pilot (results/iso-learning-pilot): which learning rate gives retention headroom


PILOT_LOSS = 0.15   # no KL and the weakest standard KL lose at least this much retention ...
PILOT_KEPT = 0.03   # ... while the strongest loses at most this much


def pilot_report(results: dict) -> str:
    """The pilot's criterion per learning rate, from a sweep's results.json whose settings are
    learning_rate x kl_coef (beta 0): each rate's loss (before - after, mean over seeds) per
    coefficient, no KL's learning, and whether the criterion of its README holds."""
    runs = results["runs"]
    rates = sorted({run["hyper"]["learning_rate"] for run in runs})
    coefs = sorted({run["hyper"]["loss"]["kl_coef"] for run in runs})

    def mean_of(rate, coef, key, at):
        values = [run["curve"][key][at] for run in runs if run["hyper"]["learning_rate"] == rate
                  and run["hyper"]["loss"]["kl_coef"] == coef]
        return float(np.mean(values))

    other = "retention/sampled_comfort"
    lines = ["| learning rate | KL coefficient | learning before -> after | retention 5+5 "
             "before -> after (loss) | comfort before -> after (loss) |",
             "|---|---|---|---|---|"]
    verdicts = []
    for rate in rates:
        losses = {}
        for coef in coefs:
            cells = []
            for key in (LEARNING, RETENTION, other):
                before, after = mean_of(rate, coef, key, 0), mean_of(rate, coef, key, -1)
                losses[(coef, key)] = before - after
                cells.append(f"{before:.3f} -> {after:.3f}"
                             + ("" if key == LEARNING else f" ({before - after:+.3f})"))
            lines.append(f"| {rate:g} | {coef:g} | " + " | ".join(cells) + " |")
        weak, strong = coefs[:2], coefs[-1]
        holds = (all(losses[(c, RETENTION)] >= PILOT_LOSS for c in weak)
                 and all(losses[(strong, k)] <= PILOT_KEPT for k in (RETENTION, other))
                 and losses[(coefs[0], LEARNING)] <= 0)
        verdicts.append(f"- learning rate {rate:g}: criterion {'holds' if holds else 'fails'}")
    return "\n".join(lines + [""] + verdicts)
