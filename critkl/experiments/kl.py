"""Figures 4, 6 and 7: standard against prioritized KL during RL on N+1 digits.

One vmapped sweep of seeds x beta (beta = 0 is the standard KL) from the model pre-trained
up to N. First the model's causal critical-token map (`critkl.causal`, reused when the
experiment folder has it), whose critical decisions the evaluations track. Figure 6 plots the
success sampled at the policy temperature (the paper's metric) and greedy pass@1 per beta;
Figures 4 and 7 the probability of the right token, given a correct prefix, at the causal
critical tokens and at the structural ones (commas and digits of operand lists beyond N).
"""

from __future__ import annotations

import dataclasses

from critkl import causal, finetune
from critkl.experiments.models import pretrained_model
from critkl.experiments.outputs import Output
from critkl.experiments.sweeps import RL_SETTINGS, run_sweep, setting_curves

N = {"tiny": 1, "mini": 3, "paper": 7}

# Critical tokens (Figures 4 and 7): standard KL against the paper's beta.
CRITICAL = {"tiny": dict(betas=[0.0, 150.0], seeds=[0, 1]),
            "mini": dict(betas=[0.0, 150.0], seeds=[0, 1]),
            "paper": dict(betas=[0.0, 150.0], seeds=list(range(10)))}
# The beta sweep (Figure 6, 9 seeds in the paper).
BETA = {"tiny": dict(betas=[0.0, 20.0, 150.0], seeds=[0, 1]),
        "mini": dict(betas=[0.0, 50.0, 150.0], seeds=list(range(5))),
        "paper": dict(betas=[0.0, 5.0, 20.0, 50.0, 150.0], seeds=list(range(9)))}


# Problems of the causal map (both operands N+1 digits); 32 take about 6 minutes at mini scale.
CAUSAL_PROBLEMS = {"tiny": 4, "mini": 32, "paper": 64}


def causal_keys(scale: str, params, pre_config, output: Output, print_fn) -> tuple:
    """The causally critical decision keys of the model, from critical.json in the output
    folder, or measured (and written there: critical.json, .md, .png)."""
    path = output.folder / "critical.json"
    if path.exists():
        print_fn(f"causal map: reusing {path}")
        return causal.read_critical_keys(path)
    settings = causal.Settings(problems=CAUSAL_PROBLEMS[scale])
    print_fn(f"causal map: {settings.problems} problems of {N[scale] + 1}+{N[scale] + 1} digits")
    rows = causal.causal_map(params, pre_config.model_config, N[scale], settings,
                             lambda done, total: print_fn(f"  forced continuations {done}/{total}"))
    output.markdown("critical.md", causal.markdown(rows))
    causal.plot(rows, output.folder / "critical.png")
    output.json("critical.json", {"settings": dataclasses.asdict(settings), "n": N[scale],
                                  "rows": rows})
    return causal.critical_keys(rows)


def beta_label(setting: str) -> str:
    """"beta=150" -> "prioritized KL, beta=150"; "kl_coef=0,..." -> "no KL"; other
    settings as they are."""
    values = dict(part.split("=") for part in setting.split(",") if "=" in part)
    if float(values.get("kl_coef", 1)) == 0:
        return "no KL"
    if "beta" not in values:
        return setting
    beta = float(values["beta"])
    return "standard KL" if beta == 0 else f"prioritized KL, beta={beta:g}"


def sweep(scale: str, plan: dict, output: Output, work_dir, print_fn) -> dict:
    n = N[scale]
    pre_config, params = pretrained_model(scale, n, work_dir, print_fn)
    settings = RL_SETTINGS[scale]
    config = dataclasses.replace(settings.config(n, 1),
                                 causal_keys=causal_keys(scale, params, pre_config, output, print_fn))
    results = run_sweep(output.folder / "rl", pre_config, params, config,
                        settings.hyper(), plan["seeds"], {"beta": plan["betas"]}, print_fn)
    output.markdown("summary.md", finetune.markdown_summary(results))
    if 0.0 in plan["betas"]:  # each beta against the standard KL, paired by seed
        output.markdown("differences.md", finetune.markdown_differences(results, "beta=0"))
    output.json("summary.json", {"settings": dataclasses.asdict(settings), "n": n,
                                 "summary": results["summary"]})
    return results


def _title(digits: int, results: dict, what: str) -> str:
    seeds = len({run["seed"] for run in results["runs"]})
    return f"{what}\nRL on {digits} digits, {seeds} seeds, mean and 95% interval"


PLOTS = (  # file, metric, what it shows
    ("causal_p_right.png", "causal/p_right", "p(right token) at the causal critical tokens"),
    ("critical_commas.png", "critical/p_right_comma", "p(right token) at structural critical commas"),
    ("critical_digits.png", "critical/p_right_digit", "p(right token) at structural critical digits"),
    ("sampled_success.png", "eval/sampled_success", "Success sampled at the policy temperature"),
    ("pass_at_1.png", "eval/pass_at_1", "Greedy pass@1"),
    ("comfort_zone.png", "eval/comfort_pass_at_1", "Greedy pass@1 in the comfort zone"),
    ("kl_critical_like.png", "loss/kl_w_low", "KL to the reference at tokens of weight w < 0.1"),
    ("kl_routine.png", "loss/kl_w_high", "KL to the reference at tokens of weight w >= 0.9"),
)


def plot_critical(digits: int, results: dict, output: Output) -> None:
    """Figures 4, 6 and 7: per beta, each metric of `PLOTS` against RL iterations."""
    curve = results["runs"][0]["curve"]
    for name, key, what in PLOTS:
        if key not in curve:
            continue
        is_kl = key.startswith("loss/")
        output.plot(name, setting_curves(results, key, beta_label),
                    title=_title(digits, results, what), xlabel="RL iteration",
                    ylabel="KL (nats per token)" if is_kl else "rate",
                    ylim=None if is_kl else (-0.02, 1.02))


def _run(plan: dict):
    def run(scale: str, output: Output, work_dir, print_fn=print) -> dict:
        results = sweep(scale, plan[scale], output, work_dir, print_fn)
        plot_critical(N[scale] + 1, results, output)
        print_fn(finetune.markdown_summary(results))
        return results
    return run


run_critical = _run(CRITICAL)  # Figures 4 and 7
run_beta = _run(BETA)  # Figure 6
