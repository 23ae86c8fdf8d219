"""Figure 3: RL on N+2 digits from models pre-trained up to several N.

The paper's pre-training comparison (Table 2): the standard KL with coefficient 10. More
pre-training should explore better: its pass@1 at N+2 rises sooner.

Run: `critkl experiment levels --scale tiny|mini|paper`.
"""

from __future__ import annotations

from critkl.runs.spec import Sweep, run_sweep
from critkl.runs import plots
from critkl.infra.outputs import Output
from experiments.models import pretrained_model, model_name
from experiments.rl_settings import RL_SETTINGS

# Pre-training levels N, RL on N + extra_digits (tiny's context holds 2-digit RL episodes
# only), seeds per level; the standard KL at the paper's coefficient for this comparison.
SETTINGS = {"tiny": dict(levels=(1,), extra_digits=1, seeds=[0, 1]),
            "mini": dict(levels=(2, 3), extra_digits=2, seeds=[0, 1, 2, 3, 4, 5]),
            "paper": dict(levels=(7, 9, 11, 13), extra_digits=2, seeds=list(range(10)))}
KL_COEF = 10.0


def run(scale: str, output: Output, work_dir, print_fn=print) -> dict:
    plan, settings = SETTINGS[scale], RL_SETTINGS[scale]
    base = settings.hyper()
    base = base.replace(loss=base.loss.replace(kl_coef=KL_COEF))
    curves, summaries = [], {}
    for n in plan["levels"]:
        pre_config, params = pretrained_model(scale, n, work_dir, print_fn)
        config = settings.config(n, plan["extra_digits"])
        results = run_sweep(Sweep(model_name("addition", scale, n), config, base, plan["seeds"],
                                  {"beta": [0.0]}),
                            output.folder / f"rl_n{n}", model=(pre_config, params),
                            print_fn=print_fn)
        summaries[n] = results["summary"]
        curves += plots.setting_curves(results, "eval/pass_at_1",
                                       label=lambda *_, n=n: f"pre-trained up to {n} digits")
    output.json("levels.json", summaries)
    output.plot("levels.png", curves, title=f"RL on N+{plan['extra_digits']} digits, standard KL "
                f"(mean and 95% interval over {len(plan['seeds'])} seeds)",
                xlabel=f"RL iteration ({settings.episodes} episodes each)",
                ylabel=f"greedy pass@1 at N+{plan['extra_digits']} digits", ylim=(-0.02, 1.02))
    return {"summaries": summaries}
