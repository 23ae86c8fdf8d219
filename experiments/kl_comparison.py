"""What Figures 4, 6 and 7 (and the main job) share: standard against prioritized KL during
RL on N+1 digits.

One vmapped sweep of seeds x beta (beta = 0 is the standard KL) from the model pre-trained
up to N. First the model's causal critical-token map (`critkl.analysis.causal`, reused when the
experiment folder has it), whose critical decisions the evaluations track. Figure 6 plots the
success sampled at the policy temperature (the paper's metric) and greedy pass@1 per beta;
Figures 4 and 7 the probability of the right token, given a correct prefix, at the causal
critical tokens and at the structural ones (commas and digits of operand lists beyond N).
"""

from __future__ import annotations

import dataclasses

from critkl.runs.spec import Sweep, run_sweep
from critkl.analysis import causal
from critkl.runs import directory, finetuning, plots
from critkl.config import CausalMapConfig, STANDARD_KL
from critkl.infra.outputs import Output
from critkl.runs.models import shipped_causal_map, shipped_names
from experiments.models import LEVEL, model_name, pretrained_model
from experiments.rl_settings import RL_SETTINGS

N = LEVEL["addition"]  # addition's N per scale, which the addition-only entries use

# Problems of the causal map (both operands N+1 digits); 32 take about 6 minutes at mini scale.
CAUSAL_PROBLEMS = {"tiny": 4, "mini": 32, "paper": 64}


def causal_keys(scale: str, params, pre_config, output: Output, print_fn) -> tuple:
    """The causally critical decision keys of the model: from critical.json in the output
    folder; else the map shipped with the model when its settings are this scale's; else
    measured. The map is written to the output folder (critical.json, .md, .png)."""
    path = output.folder / "critical.json"
    if path.exists():
        print_fn(f"causal map: reusing {path}")
        # The experiment's own map: a model may have no critical decision (tiny scale).
        return causal.read_critical_keys(path, pre_config.text_task, require_critical=False)
    settings = CausalMapConfig(problems=CAUSAL_PROBLEMS[scale])
    n = pre_config.max_digits
    level = pre_config.text_task.rl_level
    name = model_name(pre_config.task, scale, n)
    shipped = shipped_causal_map(name) if name in shipped_names() else None
    if (shipped is not None and shipped["settings"] == dataclasses.asdict(settings)
            and shipped.get("level", n + 1) == level):
        print_fn(f"causal map: the one shipped with {name}, measured by `{shipped['command']}` "
                 f"at commit {shipped['commit'][:7]}")
        record = shipped
    else:
        record = measure_causal_map(params, pre_config.model_config, pre_config.text_task,
                                    settings, print_fn, level)
    write_causal_map(output, record, RL_SETTINGS[scale].kl_coef)
    return causal.critical_keys(record["rows"])


def measure_causal_map(params, model_config, task, settings: CausalMapConfig,
                       print_fn, level: int | None = None) -> dict:
    """The map of a model pre-trained on `task` up to n = task.n, on problems at `level`
    (default `task.rl_level`), with progress lines: the record critical.json holds
    (settings, n, level, rows)."""
    n = task.n
    level = task.rl_level if level is None else level
    print_fn(f"causal map: {settings.problems} problems of {level} {task.level_unit}")
    rows = causal.causal_map(params, model_config, task, settings,
                             directory.Progress("forced continuations, sampler call", print_fn),
                             level)
    return {"settings": dataclasses.asdict(settings), "task": task.name, "n": n,
            "level": level, "rows": rows}


def write_causal_map(output: Output, record: dict, kl_coef: float) -> None:
    """critical.json (the record), critical.md (the optimum p(right) at kl_coef) and
    critical.png in the output folder."""
    output.markdown("critical.md", causal.markdown(record["rows"], kl_coef))
    causal.plot(record["rows"], output.folder / "critical.png")
    output.json("critical.json", record)


def sweep(scale: str, plan: dict, output: Output, work_dir, print_fn,
          task: str = "addition") -> dict:
    n = LEVEL[task][scale]
    pre_config, params = pretrained_model(scale, n, work_dir, print_fn, task)
    settings = RL_SETTINGS[scale]
    config = dataclasses.replace(settings.config(n, pre_config.text_task.rl_extra,
                                                 pre_config.task, pre_config.task_params),
                                 causal_keys=causal_keys(scale, params, pre_config, output, print_fn))
    results = run_sweep(Sweep(model_name(task, scale, n), config, settings.hyper(), plan["seeds"],
                              {"beta": plan["betas"]}),
                        output.folder / "rl", model=(pre_config, params), print_fn=print_fn)
    output.markdown("summary.md", finetuning.markdown_summary(results))
    if 0.0 in plan["betas"]:  # each beta against the standard KL, paired by seed
        output.markdown("differences.md", finetuning.markdown_differences(results, STANDARD_KL))
    output.json("summary.json", {"settings": dataclasses.asdict(settings), "n": n,
                                 "summary": results["summary"]})
    return results


def run(scale: str, plan: dict, output: Output, work_dir, print_fn=print) -> dict:
    """The sweep of `plan` (betas, seeds), its tables and its plots."""
    results = sweep(scale, plan, output, work_dir, print_fn)
    plots.plot_sweep(N[scale] + 1, results, output)
    print_fn(finetuning.markdown_summary(results))
    return results
