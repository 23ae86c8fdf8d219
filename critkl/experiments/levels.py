"""Figure 3: RL on N+2 digits from models pre-trained up to several N.

The paper's pre-training comparison (Table 2): the standard KL with coefficient 10. More
pre-training should explore better: its pass@1 at N+2 rises sooner.
"""

from __future__ import annotations

from critkl import rl
from critkl.experiments.accuracy import LEVELS
from critkl.experiments.models import pretrained_model
from critkl.experiments.outputs import Output
from critkl.experiments.sweeps import RL_SETTINGS, run_sweep, setting_curves

EXTRA_DIGITS = {"tiny": 1, "mini": 2, "paper": 2}  # tiny's context holds 2-digit RL episodes only
SEEDS = {"tiny": [0, 1], "mini": [0, 1, 2, 3, 4, 5], "paper": list(range(10))}
KL_COEF = 10.0


def run(scale: str, output: Output, work_dir, print_fn=print) -> dict:
    settings = RL_SETTINGS[scale]
    base = settings.hyper()
    base = base.replace(loss=base.loss.replace(kl_coef=KL_COEF))
    curves, summaries = [], {}
    for n in LEVELS[scale]:
        pre_config, params = pretrained_model(scale, n, work_dir, print_fn)
        config = settings.config(n, EXTRA_DIGITS[scale])
        results = run_sweep(output.folder / f"rl_n{n}", pre_config, params, config, base,
                            SEEDS[scale], {"beta": [0.0]}, print_fn)
        summaries[n] = results["summary"]
        curves += setting_curves(results, "eval/pass_at_1",
                                 label=lambda _, n=n: f"pre-trained up to {n} digits")
    output.json("levels.json", summaries)
    output.plot("levels.png", curves, title=f"RL on N+{EXTRA_DIGITS[scale]} digits, standard KL "
                f"(mean and 95% interval over {len(SEEDS[scale])} seeds)",
                xlabel="RL iteration (50 episodes each)" if scale != "tiny" else "RL iteration",
                ylabel=f"greedy pass@1 at N+{EXTRA_DIGITS[scale]} digits", ylim=(-0.02, 1.02))
    return {"summaries": summaries}
