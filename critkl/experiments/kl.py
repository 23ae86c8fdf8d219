"""Figures 4, 6 and 7: standard against prioritized KL during RL on N+1 digits.

One vmapped sweep of seeds x beta (beta = 0 is the standard KL) from the model pre-trained
up to N. Figure 6 plots pass@1 per beta; Figures 4 and 7 the probability of the right token
at the critical tokens (commas and digits of operand lists beyond N, given a correct prefix).
"""

from __future__ import annotations

import dataclasses

from critkl import finetune
from critkl.experiments.models import pretrained_model
from critkl.experiments.outputs import Output
from critkl.experiments.sweeps import RL_SETTINGS, run_sweep, setting_curves

N = {"tiny": 1, "mini": 3, "paper": 7}

# Critical tokens (Figures 4 and 7): standard KL against the paper's beta. At mini scale the
# vocabulary has 42 tokens, not GPT-2's 50,257: beta = 50 there is the paper's 150 rescaled by
# log 42 / log 50257 (README).
CRITICAL = {"tiny": dict(betas=[0.0, 150.0], seeds=[0, 1]),
            "mini": dict(betas=[0.0, 50.0], seeds=[0, 1, 2, 3, 4, 5]),
            "paper": dict(betas=[0.0, 150.0], seeds=list(range(10)))}
# The beta sweep (Figure 6, 9 seeds in the paper).
BETA = {"tiny": dict(betas=[0.0, 20.0, 150.0], seeds=[0, 1]),
        "mini": dict(betas=[0.0, 20.0, 50.0, 150.0], seeds=list(range(9))),
        "paper": dict(betas=[0.0, 5.0, 20.0, 50.0, 150.0], seeds=list(range(9)))}


def beta_label(setting: str) -> str:
    beta = float(setting.split("=")[1])
    return "standard KL" if beta == 0 else f"prioritized KL, beta={beta:g}"


def sweep(scale: str, plan: dict, output: Output, work_dir, print_fn) -> dict:
    n = N[scale]
    pre_config, params = pretrained_model(scale, n, work_dir, print_fn)
    settings = RL_SETTINGS[scale]
    results = run_sweep(output.folder / "rl", pre_config, params, settings.config(n, 1),
                        settings.hyper(), plan["seeds"], {"beta": plan["betas"]}, print_fn)
    output.markdown("summary.md", finetune.markdown_summary(results))
    output.json("summary.json", {"settings": dataclasses.asdict(settings), "n": n,
                                 "summary": results["summary"]})
    return results


def _title(scale: str, results: dict, what: str) -> str:
    seeds = len({run["seed"] for run in results["runs"]})
    return f"{what}, RL on {N[scale] + 1} digits ({seeds} seeds, mean and 95% interval)"


def plot_critical(scale: str, results: dict, output: Output) -> None:
    """Figures 4 and 7 (critical tokens) and the pass@1 curves of a sweep."""
    for key, what in (("critical/p_right_comma", "commas"), ("critical/p_right_digit", "digits")):
        output.plot(f"critical_{what}.png", setting_curves(results, key, beta_label),
                    title=_title(scale, results, f"p(right token) at critical {what}"),
                    xlabel="RL iteration", ylabel="probability of the right token",
                    ylim=(-0.02, 1.02))
    output.plot("pass_at_1.png", setting_curves(results, "eval/pass_at_1", beta_label),
                title=_title(scale, results, "Greedy pass@1"), xlabel="RL iteration",
                ylabel="pass@1", ylim=(-0.02, 1.02))


def _run(plan: dict):
    def run(scale: str, output: Output, work_dir, print_fn=print) -> dict:
        results = sweep(scale, plan[scale], output, work_dir, print_fn)
        plot_critical(scale, results, output)
        print_fn(finetune.markdown_summary(results))
        return results
    return run


run_critical = _run(CRITICAL)  # Figures 4 and 7
run_beta = _run(BETA)  # Figure 6
