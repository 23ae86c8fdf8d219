"""The paper's own setting: models pre-trained up to N digits and never on longer problems,
RL on N+1 (issue 34).

1. the causal critical-token map of the largest model on N+1, and what its KL-regularised
   optimum predicts for each RL arm (prediction.md, written before any RL run);
2. Figures 6 and 7 at N+1: no KL, the standard KL and the prioritized KL at each beta, one
   vmapped sweep of the same seeds per arm (the same problems in every arm), paired by seed
   against the standard KL; then the paper's own RL settings (Table 3 and the authors' code)
   as one more arm, on fewer seeds;
3. Tables 4 and 5: each model of `levels` at N..N+3 digits, identical and varying lengths,
   greedy pass@1 with Wilson intervals, and the failure profile at N+1 (the share of first
   errors at structural critical tokens, by role);
4. Table 1 and Figure 5: certainty at critical tokens on (N+1)-digit episodes, per level.

Run: `critkl experiment paper-setting --scale tiny|mini|paper` (resumable: pre-trainings and
sweeps cut off resume, finished ones are reused).
"""

from __future__ import annotations

import dataclasses
import json

from critkl.runs.spec import Sweep, run_sweep
from critkl.loss_config import DEFAULT_BETA, PAPER_TEMPERATURES, LossConfig
from critkl.runs import finetuning, plots
from critkl.infra.outputs import Output
from experiments import accuracy, certainty, frontier, kl_comparison
from experiments.models import pretrained_model, model_name
from experiments.rl_settings import RL_SETTINGS, RLSettings

# The paper's prioritized-KL experiment (METHOD.md, Table 3 and the authors' scripts): 8
# collects of 50 episodes, A2C, learning rate 1e-6, KL coefficient 5 with beta 150, their
# temperatures, GAE lambda 0.95.
PAPER_RL = RLSettings(episodes=50, iterations=8, eval_every=1, eval_episodes=100, ppo_epochs=1,
                      minibatches=1, learning_rate=1e-6, kl_coef=5.0, **PAPER_TEMPERATURES)
PAPER_LAMBDA = 0.95

# Pre-training levels N (RL on the largest + 1), problems per accuracy cell, episodes sampled
# per accuracy cell at temperature 1; the prioritized arms' betas (every arm at the scale's
# RL_SETTINGS KL coefficient); the arms' seeds (none an earlier experiment used) and the
# paper-settings arm's.
SETTINGS = {
    "tiny": dict(levels=(1,), problems=8, sampled_episodes=8,
                 betas=(DEFAULT_BETA,), seeds=[0, 1], paper_seeds=[0]),
    "mini": dict(levels=(3, 5, 7), problems=1000, sampled_episodes=200,
                 betas=(DEFAULT_BETA, 500.0), seeds=list(range(2000, 2009)),
                 paper_seeds=[2000, 2001, 2002]),
    "paper": dict(levels=(3, 5, 7), problems=1000, sampled_episodes=200,
                  betas=(DEFAULT_BETA, 500.0), seeds=list(range(2000, 2009)),
                  paper_seeds=[2000, 2001, 2002]),
}
BASELINE = "standard"


def rl_arms(kl_coef: float, betas: tuple[float, ...]) -> tuple[frontier.Arm, ...]:
    """No KL, the standard KL, the prioritized KL at each beta (all at kl_coef)."""
    return ((frontier.Arm("no-kl", 0.0, 0.0), frontier.Arm(BASELINE, kl_coef, 0.0))
            + tuple(frontier.Arm(f"prioritized-beta{b:g}", kl_coef, b) for b in betas))


def run(scale: str, output: Output, work_dir, print_fn=print) -> dict:
    """The causal map and the RL runs first (they need only the largest model, shipped at
    mini scale), then the tables across levels (whose smaller models may still need their
    pre-training: N = 5 takes hours of a CPU)."""
    plan = SETTINGS[scale]
    top = max(plan["levels"])
    print_fn(f"\n== 1/4 the causal map of the model pre-trained up to {top} digits, on "
             f"{top + 1} digits")
    pre_config, params = pretrained_model(scale, top, work_dir, print_fn)
    keys = kl_comparison.causal_keys(scale, params, pre_config, output, print_fn)
    record = json.loads((output.folder / "critical.json").read_text())
    settings = RL_SETTINGS[scale]
    arms = rl_arms(settings.kl_coef, plan["betas"])
    if keys:
        output.markdown("prediction.md", frontier.predictions(record["rows"], arms,
                                                              record["settings"]["beta"]))

    print_fn(f"\n== 2/4 RL on {top + 1} digits (Figures 6, 7): {len(arms)} arms of "
             f"{len(plan['seeds'])} seeds, then the paper's settings on "
             f"{len(plan['paper_seeds'])} seeds")
    runs, summary = [], {}
    config = dataclasses.replace(settings.config(top, 1), causal_keys=keys)
    for arm in arms:
        result = run_sweep(Sweep(model_name("addition", scale, top), config, settings.hyper(),
                                 plan["seeds"], {"kl_coef": [arm.kl_coef], "beta": [arm.beta]}),
                           output.folder / "rl" / arm.name, model=(pre_config, params),
                           print_fn=print_fn)
        runs += [{**r, "setting": arm.name} for r in result["runs"]]
        summary[arm.name] = next(iter(result["summary"].values()))
    results = {"runs": runs, "summary": summary}
    paper_config = dataclasses.replace(PAPER_RL.config(top, 1), causal_keys=keys,
                                       loss=LossConfig(algorithm="a2c"))
    paper_hyper = dataclasses.replace(PAPER_RL.hyper(), lam=PAPER_LAMBDA)
    paper = run_sweep(Sweep(model_name("addition", scale, top), paper_config, paper_hyper,
                            plan["paper_seeds"], {"beta": [DEFAULT_BETA]}),
                      output.folder / "rl" / "paper-settings", model=(pre_config, params),
                      print_fn=print_fn)
    paper = {"runs": [{**r, "setting": "paper-settings"} for r in paper["runs"]],
             "summary": {"paper-settings": next(iter(paper["summary"].values()))}}

    plots.plot_sweep(top + 1, results, output)
    text = "\n".join([
        f"# The paper's setting: RL on {top + 1} digits", "",
        f"Arms at KL coefficient {settings.kl_coef:g}, seeds "
        f"{', '.join(map(str, plan['seeds']))}:", "", finetuning.markdown_summary(results), "",
        f"Paired by seed against the {BASELINE} KL (percentage points):", "",
        finetuning.markdown_differences(results, BASELINE), "",
        f"The paper's settings (Table 3: A2C, learning rate {PAPER_RL.learning_rate:g}, KL "
        f"coefficient {PAPER_RL.kl_coef:g}, beta {DEFAULT_BETA:g}, {PAPER_RL.iterations} "
        f"collects of {PAPER_RL.episodes} episodes), seeds "
        f"{', '.join(map(str, plan['paper_seeds']))}:", "", finetuning.markdown_summary(paper),
    ])
    output.markdown("rl.md", text)
    output.json("rl.json", {"n": top, "seeds": plan["seeds"], "paper_seeds": plan["paper_seeds"],
                            "arms": [arm._asdict() for arm in arms],
                            "settings": dataclasses.asdict(settings),
                            "paper_settings": dataclasses.asdict(PAPER_RL),
                            "summary": summary, "paper_summary": paper["summary"]})
    print_fn("\n" + text)

    print_fn(f"\n== 3/4 accuracy (Tables 4, 5) of the models pre-trained up to "
             f"{', '.join(map(str, plan['levels']))} digits")
    curves = []
    for n in plan["levels"]:  # accuracy_n{n}.md: the table and the failure profile at N+1
        curves += accuracy.evaluate_level(
            scale, n, output, work_dir, problems=plan["problems"],
            sampled_episodes=plan["sampled_episodes"], temperatures=(1.0,), print_fn=print_fn)[1]
    accuracy.plot(output, curves)

    print_fn(f"\n== 4/4 certainty at critical tokens (Table 1) on N+1 digits, N = "
             f"{', '.join(map(str, plan['levels']))}")
    certainty.run(scale, output, work_dir, print_fn, levels=plan["levels"])
    return {"runs": runs + paper["runs"]}
