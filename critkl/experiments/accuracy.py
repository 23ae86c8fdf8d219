"""Tables 4 and 5, Figure 2: accuracy of models pre-trained up to N, at N..N+3 digits.

Greedy pass@1 with 95% Wilson intervals, identical and varying operand lengths
(`critkl.evaluation.accuracy_table`), one curve per pre-training level.
"""

from __future__ import annotations

import jax

from critkl import evaluation
from critkl.experiments.models import pretrained_model
from critkl.experiments.outputs import Curve, Output

LEVELS = {"tiny": (1,), "mini": (2, 3), "paper": (7, 9, 11, 13)}
PROBLEMS = {"tiny": 8, "mini": 1000, "paper": 1000}
SAMPLED_EPISODES = {"tiny": 8, "mini": 200, "paper": 200}


def evaluate_level(scale: str, n: int, output: Output, work_dir, *, problems: int,
                   sampled_episodes: int, temperatures=(1.0, 1.5, 2.0), print_fn=print):
    """Accuracy table of the `scale` model pre-trained up to n -> (report, its two curves)."""
    pre_config, params = pretrained_model(scale, n, work_dir, print_fn)
    report = evaluation.accuracy_table(
        params, pre_config.model_config, n, jax.random.key(0), problems=problems,
        extra_digits=pre_config.eval_extra_digits, temperatures=temperatures,
        rl_episodes=sampled_episodes)
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
    reports, curves = {}, []
    for n in LEVELS[scale]:
        reports[n], level_curves = evaluate_level(
            scale, n, output, work_dir, problems=PROBLEMS[scale],
            sampled_episodes=SAMPLED_EPISODES[scale], print_fn=print_fn)
        curves += level_curves
    output.json("accuracy.json", reports)
    plot(output, curves)
    return {"reports": reports}
