"""The main job: the paper's story in one command, sized to finish on a laptop CPU at mini scale.

1. the pre-trained model's accuracy at N..N+3 digits (Tables 4-5);
2. its certainty at critical tokens against the rest (Table 1, Figure 5);
3. its causal critical-token map (the decisions that decide the outcome; shipped with the
   mini model, measured otherwise);
4. RL on N+1 digits (path-star: N edges, `TextTask.rl_level`) with the standard and the
   prioritized KL over several seeds, one vmapped program (Figures 4, 6, 7), and the
   verdict: prioritized minus standard sampled success, paired by seed;
5. a summary table (main.md) and the plots.

Run: `critkl experiment mini` (or `tiny`, `paper`).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from critkl import evaluation, statistics
from critkl.analysis import certainty as token_stats
from critkl.config import STANDARD_KL
from critkl.infra import host_memory
from critkl.loss_config import DEFAULT_BETA
from critkl.runs import finetuning, plots
from critkl.infra.outputs import Output
from critkl.tasks import registry
from experiments import accuracy, certainty, kl_comparison
from experiments.models import LEVEL, pretrained_model

SETTINGS = {"tiny": dict(problems=8, sampled_episodes=8, seeds=[0, 1], betas=[0.0, DEFAULT_BETA]),
            # 6 seeds per arm (seeds no other experiment uses): the fewest with which the exact
            # paired sign-flip test can reach p < 0.05 (1/32 when every seed agrees).
            "mini": dict(problems=100, sampled_episodes=50, seeds=list(range(200, 206)),
                         betas=[0.0, DEFAULT_BETA]),
            "paper": dict(problems=1000, sampled_episodes=200, seeds=list(range(200, 209)),
                          betas=[0.0, DEFAULT_BETA])}

SIGNIFICANCE = 0.05


def verdict(results: dict) -> str:
    """Per prioritized setting, one sentence: its sampled success minus the standard KL's at
    the end, paired by seed, with a bootstrap and a t interval over seeds, how many favour it,
    the exact sign-flip test, and whether that shows a difference at SIGNIFICANCE."""
    lines = []
    label = finetuning.setting_labels(results)
    for setting, differences in finetuning.per_seed_differences(
            results, STANDARD_KL, "eval/sampled_success").items():
        mean, low, high = statistics.mean_interval(differences)
        _, t_low, t_high = statistics.t_interval(differences)
        p = statistics.paired_test(differences)
        shown = (f"{'above' if mean > 0 else 'below'} the standard KL (p < {SIGNIFICANCE:g})"
                 if p < SIGNIFICANCE else
                 "not shown at this budget; the frontier experiment (results/frontier-mini) "
                 "is the comparison that decides it")
        lines.append(
            f"{label[setting]}: sampled success {100 * mean:+.1f} points [{100 * low:+.1f}, "
            f"{100 * high:+.1f}] (t interval [{100 * t_low:+.1f}, {100 * t_high:+.1f}]) "
            f"against the standard KL, paired over {len(differences)} seeds "
            f"({int(np.sum(differences > 0))} favour it, {int(np.sum(differences < 0))} the "
            f"standard KL); sign-flip p = {p:.3f}: {shown}.")
    return "\n".join(lines)


# Minutes each of the four stages took at mini scale from a fresh clone on this project's
# 2-core CPU (results/main-mini/log.txt): the job's overall estimate. Other scales print none.
STAGE_MINUTES = {"mini": (1.1, 0.5, 0.0, 21.4)}


def run(scale: str, output: Output, work_dir, print_fn=print, task: str = "addition") -> dict:
    plan, n = SETTINGS[scale], LEVEL[task][scale]
    rl_level = n + registry.task_class(task).rl_extra
    started = time.perf_counter()
    stage = 0

    def step(text: str) -> None:
        nonlocal stage
        stage += 1
        # The last stage's compiled programs (about 0.9 GB after the certainty stage), and
        # what it freed: each stage compiles its own.
        jax.clear_caches()
        host_memory.release_freed()
        line = f"\n== [{(time.perf_counter() - started) / 60:4.1f} min] {stage}/4 {text}"
        if scale in STAGE_MINUTES and task == "addition":
            line += (f"  (about {sum(STAGE_MINUTES[scale][stage - 1:]):.0f} min left at the "
                     "speed of a 2-core CPU)")
        print_fn(line)

    pre_config, params = pretrained_model(scale, n, work_dir, print_fn, task)
    unit = pre_config.text_task.level_unit
    step(f"accuracy of the {task} model pre-trained up to {n} {unit}")
    report, curves = accuracy.evaluate_level(
        scale, n, output, work_dir, problems=plan["problems"],
        sampled_episodes=plan["sampled_episodes"], temperatures=(1.0,), print_fn=print_fn,
        task=task)
    accuracy.plot(output, curves)
    step(f"certainty at critical tokens (episodes of {n + 1} {unit})")
    table1 = certainty.run(scale, output, work_dir, print_fn, levels=(n,), task=task)["tables"][0]
    step(f"causal critical-token map (episodes of {rl_level} {unit})")
    kl_comparison.causal_keys(scale, params, pre_config, output, print_fn)
    step(f"RL on {rl_level} {unit}: standard vs prioritized KL, {len(plan['seeds'])} seeds each")
    results = kl_comparison.sweep(scale, plan, output, work_dir, print_fn, task)
    plots.plot_sweep(rl_level, results, output)

    minutes = (time.perf_counter() - started) / 60
    summary = "\n".join([
        f"# critkl experiment {scale}, task {task}: summary ({minutes:.1f} min)", "",
        f"## Pre-trained up to {n} {unit} (greedy pass@1, {plan['problems']} problems per cell)",
        "", evaluation.markdown(report), "",
        "## Certainty at critical tokens (Table 1)", "",
        token_stats.certainty_markdown([table1]), "",
        "## Causal critical-token map (critical.md, critical.png)", "",
        (output.folder / "critical.md").read_text().strip(), "",
        f"## RL on {rl_level} {unit}", "", finetuning.markdown_summary(results), "",
        finetuning.markdown_differences(results, STANDARD_KL), "",
        "## Verdict", "", verdict(results), "",
    ])
    output.markdown("main.md", summary)
    output.json("main.json", {"scale": scale, "task": task, "minutes": minutes,
                              "accuracy": report,
                              "certainty": table1, "rl_summary": results["summary"],
                              "differences": finetuning.paired_differences(results, STANDARD_KL)})
    print_fn("\n" + summary)
    return {"minutes": minutes}
