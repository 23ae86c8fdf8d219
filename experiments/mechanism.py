"""A controlled mechanism test (constructed, not the paper's): a model with one known causal
fork, and whether each KL lets RL resolve it as the KL-regularised optimum predicts.

1. The model pre-trained up to F digits (the shipped mini-n3 at mini scale, F = 3) is trained
   on for a short stage in which half of the episodes with an F-digit operand close that
   operand's list one digit early (`addition.render_closed_early`) and then fail: p(right) at
   that comma falls to about 0.5, every other decision stays as it was.
2. Its causal map on F+F-digit problems (`critkl.analysis.causal`) should find that one fork, success
   about 1 if forced right and 0 if forced wrong; from it the optimum p(right) at the fork
   under each KL is printed before any RL (`causal.optimum_p_right`): at KL coefficient 5
   about 0.6 for the standard KL, about 1.0 for the prioritized KL at beta 150.
3. RL on F digits (the model treated as pre-trained up to F - 1, so the comfort zone is up
   to F - 1 digits), the standard against the prioritized KL over seeds, one vmapped
   program; the measured p(right) at the fork and sampled success against the prediction.

Run: `critkl experiment mechanism --scale tiny|mini`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from critkl.runs.spec import Sweep, run_sweep
from critkl.analysis import causal
from critkl.runs import finetuning, plots
from critkl.config import STANDARD_KL, CausalMapConfig, PretrainConfig, RLConfig, RLHyper
from critkl.infra.outputs import Output
from critkl.loss_config import DEFAULT_BETA, DEFAULT_KL_COEF, LossHyper
from critkl.runs.models import load_pretrained
from critkl.tasks import registry
from experiments.kl_comparison import measure_causal_map, write_causal_map
from experiments.models import pretrained_source, train


# F: digits of the fork; the fork stage (warm start from the model pre-trained up to F); the
# causal map's problems; RL (standard KL against beta 150 at the paper's KL coefficient 5).
SETTINGS = {
    "tiny": dict(fork_digits=2, model="tiny", stage=dict(batch_size=8, steps=6, warmup_steps=1,
                                                         log_every=3, eval_every=6,
                                                         eval_problems=8, checkpoint_every=6),
                 map_problems=4, rl=dict(episodes=4, iterations=2, eval_every=1,
                                         eval_episodes=4, ppo_epochs=1, minibatches=2),
                 seeds=[0, 1]),
    "mini": dict(fork_digits=3, model="mini", stage=dict(batch_size=16, steps=200, warmup_steps=10,
                                                         log_every=20, eval_every=200,
                                                         eval_problems=100,
                                                         checkpoint_every=100),
                 map_problems=32, rl=dict(episodes=128, iterations=15, eval_every=5,
                                          eval_episodes=100),
                 seeds=[0, 1, 2]),
}
SHARE, KL_COEF, BETA = 0.5, DEFAULT_KL_COEF, DEFAULT_BETA


def fork_stage(scale: str, plan: dict, work_dir, print_fn) -> str:
    """The run directory of the forked model (trained, or resumed, unless finished)."""
    fork = plan["fork_digits"]
    source = pretrained_source(scale, fork, work_dir, print_fn)
    config = PretrainConfig(model=plan["model"], max_digits=fork, init_from=source,
                            early_close_share=SHARE, eval_extra_digits=1, learning_rate=5e-4,
                            **plan["stage"])
    run_dir = Path(work_dir) / "models" / f"{scale}-n{fork}-fork"
    train(run_dir, config, f"the forked {scale}-n{fork} ", print_fn)
    return str(run_dir)


def forked_model_and_map(scale: str, work_dir, print_fn):
    """The forked model (trained unless it is there) and its causal map:
    (pre-training config, params, n, the map's record); the fork is at n + 1 digits."""
    plan = SETTINGS[scale]
    n = plan["fork_digits"] - 1
    pre_config, params = load_pretrained(fork_stage(scale, plan, work_dir, print_fn))
    settings = CausalMapConfig(problems=plan["map_problems"], beta=BETA)
    record = measure_causal_map(params, pre_config.model_config, registry.make(pre_config.task, n),
                                settings, print_fn)
    return pre_config, params, n, record


def prediction(rows: list[dict]) -> list[dict]:
    """Per causally critical decision: p(right) now and at the optimum of each KL."""
    return [{"label": row["label"], "p_right": row["p_right"], "kl_weight": row["kl_weight"],
             "standard": causal.optimum_p_right(row, KL_COEF, 1.0),
             "prioritized": causal.optimum_p_right(row, KL_COEF, row["kl_weight"])}
            for row in rows if row.get("critical")]


def run(scale: str, output: Output, work_dir, print_fn=print) -> dict:
    if scale not in SETTINGS:
        raise ValueError(f"the mechanism test has no {scale!r} scale (allowed: "
                         f"{', '.join(SETTINGS)})")
    plan = SETTINGS[scale]
    pre_config, params, n, record = forked_model_and_map(scale, work_dir, print_fn)
    write_causal_map(output, record, KL_COEF)
    rows = record["rows"]
    predicted = prediction(rows)
    for row in predicted:
        print_fn(f"predicted before RL, {row['label']}: p(right) {row['p_right']:.2f} -> "
                 f"{row['standard']:.2f} (standard KL), {row['prioritized']:.2f} "
                 f"(prioritized, w = {row['kl_weight']:.2g})")

    config = RLConfig(n=n, extra_digits=1, causal_keys=causal.critical_keys(rows), **plan["rl"])
    base = RLHyper(loss=LossHyper(kl_coef=KL_COEF))
    results = run_sweep(Sweep("mechanism", config, base, plan["seeds"], {"beta": [0.0, BETA]}),
                        output.folder / "rl", model=(pre_config, params), print_fn=print_fn)
    plots.plot_sweep(n + 1, results, output)
    table = finetuning.markdown_summary(results)
    differences = finetuning.markdown_differences(results, STANDARD_KL)
    predicted_p = {STANDARD_KL: np.mean([r["standard"] for r in predicted]) if predicted else None,
                   f"beta={BETA:g}": (np.mean([r["prioritized"] for r in predicted])
                                      if predicted else None)}
    lines = [f"# Mechanism test (constructed): one fork at {n + 1} digits", "",
             f"Fork stage: {SHARE:.0%} of the episodes with a {n + 1}-digit operand close its "
             "list one digit early. Causal map (critical.md):", "",
             "| critical decision | p(right) | w | optimum, standard KL | optimum, prioritized |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['p_right']:.2f} | {r['kl_weight']:.2g} | {r['standard']:.2f} "
              f"| {r['prioritized']:.2f} |" for r in predicted]
    lines += ["", f"RL on {n + 1} digits at KL coefficient {KL_COEF:g}, "
              f"{len(plan['seeds'])} seeds per arm:", "", table, "", differences, ""]
    output.markdown("mechanism.md", "\n".join(lines))
    output.json("mechanism.json", {"prediction": predicted, "predicted_p_right": predicted_p,
                                   "summary": results["summary"],
                                   "differences": finetuning.paired_differences(results, STANDARD_KL)})
    print_fn("\n".join(lines))
    return {"prediction": predicted, "summary": results["summary"]}
