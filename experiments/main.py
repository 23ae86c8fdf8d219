"""The main job: the paper's story in one command, sized to finish on a laptop CPU at mini scale.

1. the pre-trained model's accuracy at N..N+3 digits (Tables 4-5);
2. its certainty at critical tokens against the rest (Table 1, Figure 5);
3. RL on N+1 digits with the standard and the prioritized KL over several seeds, one
   vmapped program (Figures 4, 6, 7);
4. a summary table (summary.md) and the plots.

Run: `critkl experiment mini` (or `tiny`, `paper`).
"""

from __future__ import annotations

import time

from critkl import analysis, evaluation, finetune, plots
from critkl.outputs import Output
from experiments import accuracy, certainty, kl_comparison

SETTINGS = {"tiny": dict(problems=8, sampled_episodes=8, seeds=[0, 1], betas=[0.0, 150.0]),
        "mini": dict(problems=200, sampled_episodes=50, seeds=[0, 1], betas=[0.0, 150.0]),
        "paper": dict(problems=1000, sampled_episodes=200, seeds=list(range(5)),
                      betas=[0.0, 150.0])}


def run(scale: str, output: Output, work_dir, print_fn=print) -> dict:
    plan, n = SETTINGS[scale], kl_comparison.N[scale]
    started = time.perf_counter()

    def step(text: str) -> None:
        print_fn(f"\n== [{time.perf_counter() - started:5.0f} s] {text}")

    step(f"1/3 accuracy of the model pre-trained up to {n} digits")
    report, curves = accuracy.evaluate_level(
        scale, n, output, work_dir, problems=plan["problems"],
        sampled_episodes=plan["sampled_episodes"], temperatures=(1.0,), print_fn=print_fn)
    accuracy.plot(output, curves)
    step(f"2/3 certainty at critical tokens ({n + 1}-digit episodes)")
    table1 = certainty.run(scale, output, work_dir, print_fn, levels=(n,))["tables"][0]
    step(f"3/3 RL on {n + 1} digits: standard vs prioritized KL, {len(plan['seeds'])} seeds each")
    results = kl_comparison.sweep(scale, plan, output, work_dir, print_fn)
    plots.plot_sweep(n + 1, results, output)

    minutes = (time.perf_counter() - started) / 60
    summary = "\n".join([
        f"# critkl experiment {scale}: summary ({minutes:.1f} min)", "",
        f"## Pre-trained up to {n} digits (greedy pass@1, {plan['problems']} problems per cell)",
        "", evaluation.markdown(report), "",
        "## Certainty at critical tokens (Table 1)", "",
        analysis.certainty_markdown([table1]), "",
        f"## RL on {n + 1} digits", "", finetune.markdown_summary(results), "",
    ])
    output.markdown("main.md", summary)
    output.json("main.json", {"scale": scale, "minutes": minutes, "accuracy": report,
                              "certainty": table1, "rl_summary": results["summary"]})
    print_fn("\n" + summary)
    return {"minutes": minutes}
