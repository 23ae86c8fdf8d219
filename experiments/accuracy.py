"""Tables 4 and 5, Figure 2: accuracy of models pre-trained up to N, at N..N+3 digits.

Greedy pass@1 with 95% Wilson intervals, identical and varying operand lengths
(`critkl.evaluation.accuracy_table`), one curve per pre-training level.

Run: `critkl experiment accuracy --scale tiny|mini|paper`.
"""

from __future__ import annotations

import jax

from critkl import evaluation
from critkl.runs import directory
from critkl.infra.outputs import Curve, Output
from experiments.models import pretrained_model

# Pre-training levels N, problems per table cell, episodes sampled at the RL temperatures.
SETTINGS = {"tiny": dict(levels=(1,), problems=8, sampled_episodes=8),
            "mini": dict(levels=(2, 3), problems=1000, sampled_episodes=200),
            "paper": dict(levels=(7, 9, 11, 13), problems=1000, sampled_episodes=200)}


def evaluate_level(scale: str, n: int, output: Output, work_dir, *, problems: int,
                   sampled_episodes: int, temperatures=(1.0, 1.5, 2.0), print_fn=print,
                   task: str = "addition"):
    """Accuracy table of the `scale` model of `task` pre-trained up to n -> (report, its two
    curves)."""
    pre_config, params = pretrained_model(scale, n, work_dir, print_fn, task)
    report = evaluation.accuracy_table(
        params, pre_config.model_config, pre_config.text_task, jax.random.key(0), problems=problems,
        extra_digits=pre_config.eval_extra_digits, temperatures=temperatures,
        rl_episodes=sampled_episodes, progress=directory.Progress("accuracy batch", print_fn))
    table = evaluation.markdown(report)
    print_fn(f"pre-trained up to {n} digits, {problems} problems per cell:\n{table}")
    output.markdown(f"accuracy_n{n}.md", table)
    curves = []
    for kind, style in (("identical", "-o"), ("varying", "--s")):
        cells = sorted((int(key.split("/")[0]), cell) for key, cell in report["cells"].items()
                       if key.endswith(kind))
        curves.append(Curve(f"N={n}, {kind} lengths", [d for d, _ in cells],
                            *([c[name] for _, c in cells] for name in ("pass_at_1", "low", "high")),
                            style=style))
    return report, curves


def plot(output: Output, curves) -> None:
    output.plot("accuracy.png", curves, title="Greedy pass@1 of models pre-trained up to N digits",
                xlabel="operand digits", ylabel="pass@1 (95% interval)", ylim=(-0.02, 1.02))


def run(scale: str, output: Output, work_dir, print_fn=print) -> dict:
    settings, reports, curves = SETTINGS[scale], {}, []
    for n in settings["levels"]:
        reports[n], level_curves = evaluate_level(
            scale, n, output, work_dir, problems=settings["problems"],
            sampled_episodes=settings["sampled_episodes"], print_fn=print_fn)
        curves += level_curves
    output.json("accuracy.json", reports)
    plot(output, curves)
    return {"reports": reports}
