"""Beyond the paper: per-token weightings of the literature side by side during RL on N+1
digits (`critkl.weighting`): the standard KL, the paper's prioritized KL, 80/20 (policy
gradient from the 20% highest-entropy tokens), Archer (no KL and a wider clip above each
episode's 80th entropy percentile) and KL-Cov (KL only on the 0.2% highest-covariance tokens).

Every arm runs the same seeds (the same problems and the same first random stream per seed)
at the scale's RL settings (`experiments.rl_settings`), one sweep per arm (a weighting is part
of the compiled program), each resumable. Writes summary.md (sampled success, greedy pass@1,
comfort zone, p(right) at the causal critical decisions; mean and 95% interval over seeds),
differences.md (each arm minus the standard KL, paired by seed) and the sweep plots.

Run: `critkl experiment weightings --scale tiny|mini|paper`.
"""

from __future__ import annotations

import dataclasses

from critkl.runs.spec import Sweep, run_sweep
from critkl.runs import finetuning, plots
from critkl.config import with_values
from critkl.infra.outputs import Output
from critkl.loss_config import LossConfig, weighting_preset
from experiments import kl_comparison
from experiments.models import pretrained_model, model_name
from experiments.rl_settings import RL_SETTINGS

ARMS = ("standard", "prioritized", "80-20", "archer", "kl-cov")
SETTINGS = {"tiny": dict(arms=ARMS, seeds=[0, 1]),
            "mini": dict(arms=ARMS, seeds=[0, 1, 2, 3]),
            "paper": dict(arms=ARMS, seeds=list(range(9)))}


def run(scale: str, output: Output, work_dir, print_fn=print) -> dict:
    plan, n = SETTINGS[scale], kl_comparison.N[scale]
    pre_config, params = pretrained_model(scale, n, work_dir, print_fn)
    settings = RL_SETTINGS[scale]
    keys = kl_comparison.causal_keys(scale, params, pre_config, output, print_fn)
    runs = []
    for index, arm in enumerate(plan["arms"]):
        print_fn(f"\n== weighting {index + 1}/{len(plan['arms'])}: {arm}, "
                 f"{len(plan['seeds'])} seeds")
        fields, values = weighting_preset(arm)
        config = dataclasses.replace(settings.config(n, 1), causal_keys=keys,
                                     loss=LossConfig(**fields))
        base = with_values(settings.hyper(), values)
        result = run_sweep(Sweep(model_name("addition", scale, n), config, base, plan["seeds"]),
                           output.folder / "rl" / arm, model=(pre_config, params),
                           print_fn=print_fn)
        runs += [{**run, "setting": arm, "name": f"{arm},seed={run['seed']}"}
                 for run in result["runs"]]
    results = {"runs": runs}
    results["summary"] = finetuning.summary(results)
    output.markdown("summary.md", finetuning.markdown_summary(results))
    output.markdown("differences.md", finetuning.markdown_differences(results, "standard"))
    output.json("summary.json", {"settings": dataclasses.asdict(settings), "n": n,
                                 "arms": {arm: weighting_preset(arm) for arm in plan["arms"]},
                                 "summary": results["summary"]})
    plots.plot_sweep(n + 1, results, output)
    print_fn(finetuning.markdown_summary(results))
    print_fn(finetuning.markdown_differences(results, "standard"))
    return results
