"""The paper's experiments as one-command entries, each at three scales.

`critkl experiment NAME [--scale tiny|mini|paper] [--out DIR]` runs one entry; `critkl
experiment mini` (or `tiny`, `paper`) is the main job at that scale. Each entry writes
TensorBoard logs, JSON, Markdown tables and PNG plots under its output folder, reuses the
models it pre-trains (under DIR/models), and resumes RL sweeps that were cut off.

Each entry is one module of this folder, with its settings per scale (`SETTINGS`) at the
top; the RL settings they share are in `rl_settings.py`, the pre-training recipes in
`models.py`.

Scales: `tiny` for tests (seconds, meaningless numbers), `mini` for a 2-core CPU (the shipped
mini models), `paper` for a GPU or TPU VM (GPT-2 small dimensions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

from critkl.infra import provenance
from critkl.tasks import registry
from critkl.infra.outputs import Output
from experiments import (accuracy, beta, certainty, critical, detectors, frontier, iso_learning,
                         levels, main, mechanism, paper_setting, weightings)

SCALES = ("tiny", "mini", "paper")


class Experiment(NamedTuple):
    result: str  # what of the paper it reproduces
    run: Callable  # (scale, output, work_dir, print_fn[, task]) -> results
    any_task: bool = False  # run takes task=: any registered task, else addition only
    scales: tuple[str, ...] = ("tiny", "mini", "paper")  # the scales it has settings for


EXPERIMENTS = {
    "main": Experiment("the main job: accuracy, certainty, standard vs prioritized KL", main.run,
                       any_task=True),
    "certainty": Experiment("Table 1, Figure 5: certainty at critical tokens", certainty.run),
    "accuracy": Experiment("Tables 4-5, Figure 2: accuracy of models pre-trained up to N",
                           accuracy.run),
    "levels": Experiment("Figure 3: RL on N+2 from several pre-training levels", levels.run),
    "critical": Experiment("Figures 4 and 7: p(right token) at critical tokens during RL",
                           critical.run),
    "beta": Experiment("Figure 6: pass@1 during RL for several beta", beta.run),
    "mechanism": Experiment("constructed: one known causal fork, standard vs prioritized KL "
                            "against the predicted optimum", mechanism.run),
    "detectors": Experiment("beyond the paper: each token signal scored against the causal "
                            "critical tokens (precision-recall)", detectors.run,
                            any_task=True),
    "weightings": Experiment("beyond the paper: standard KL, prioritized KL, 80/20, Archer and "
                             "KL-Cov side by side", weightings.run),
    "paper-setting": Experiment("Tables 1, 4, 5 across N and Figures 6, 7 at N+1 with models "
                                "never pre-trained on longer problems (the paper's setting)",
                                paper_setting.run),
    "frontier": Experiment("beyond the paper: learning on N+1 against retention, no KL, the "
                           "standard KL's frontier and the prioritized KL", frontier.run),
    "iso-learning": Experiment("beyond the paper: at equal learning, does the prioritized KL "
                               "retain more than a uniform KL, and is it where or how much "
                               "(uniform and shuffled controls)", iso_learning.run,
                               scales=tuple(iso_learning.SETTINGS)),
}


def check(name: str, scale: str, task: str) -> None:
    """ValueError naming what is wrong: an unknown experiment, scale or task, or a task the
    experiment does not run."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r} (allowed: {', '.join(EXPERIMENTS)})")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r} (allowed: {', '.join(SCALES)})")
    if scale not in EXPERIMENTS[name].scales:
        raise ValueError(f"experiment {name!r} has settings at scale "
                         f"{', '.join(EXPERIMENTS[name].scales)} only, not {scale!r}")
    registry.task_class(task)
    if task != registry.DEFAULT and not EXPERIMENTS[name].any_task:
        runs_any = ", ".join(n for n, e in EXPERIMENTS.items() if e.any_task)
        raise ValueError(f"experiment {name!r} runs on task {registry.DEFAULT!r} only, not "
                         f"{task!r} (entries that take --task: {runs_any})")


def run(name: str, scale: str, out_dir: str | Path, print_fn=print,
        task: str = registry.DEFAULT) -> Path:
    """Run experiment `name` at `scale` on `task`, writing into out_dir/name-scale (another
    task than addition: out_dir/name-task-scale), with run.json (the command and the commit).
    Returns that folder."""
    check(name, scale, task)
    experiment = EXPERIMENTS[name]
    folder = f"{name}-{scale}" if task == registry.DEFAULT else f"{name}-{task}-{scale}"
    output = Output(Path(out_dir) / folder)
    output.json("run.json", {**provenance.record(), "experiment": name, "scale": scale,
                             "task": task})
    try:
        if experiment.any_task:
            experiment.run(scale, output, out_dir, print_fn, task=task)
        else:
            experiment.run(scale, output, out_dir, print_fn)
    finally:
        output.close()
    print_fn(f"\nresults in {output.folder}: " + ", ".join(sorted({p.name for p in output.written}))
             + f"\ntensorboard --logdir {output.folder}")
    return output.folder
