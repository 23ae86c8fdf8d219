"""Pre-trained models for experiments: shipped ones, or made by a documented recipe.

`pretrained_model(scale, n, work_dir, task=...)` returns the model of that scale and task
pre-trained up to level n: the shipped `model_name(task, scale, n)` when the package has it,
else the result of the recipe (`recipe(scale, n, ..., task)`), trained under work_dir/models
and reused (or resumed, when cut off) by later experiments.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from critkl.infra import checkpoint
from critkl.runs import pretraining
from critkl.config import PretrainConfig
from critkl.runs.models import load_pretrained, shipped_names


MAX_STAGES = 5  # the most pre-training stages a recipe has (path-star's mini model)

# From this many digits up, a mini model is pre-trained as in the paper: no longer problems.
PAPER_SETTING_DIGITS = 5

# The level N each task's experiments pre-train up to at each scale (RL on N + 1): addition's
# and multiplication's digits per operand, path-star's edges per arm.
LEVEL = {"addition": {"tiny": 1, "mini": 3, "paper": 7},
         "path-star": {"tiny": 1, "mini": 5, "paper": 6},
         "multiplication": {"tiny": 1, "mini": 3, "paper": 5}}


def model_name(task: str, scale: str, n: int) -> str:
    """The name a model ships by: addition's "mini-n3", another task's "path-star-mini-n4"."""
    return f"{scale}-n{n}" if task == "addition" else f"{task}-{scale}-n{n}"


def _other_task_recipe(scale: str, n: int, task: str, stage_dirs: list[Path]
                       ) -> list[PretrainConfig]:
    """One stage on the task's levels 1..n, evaluated up to n + 3 (tiny: n + 1);
    multiplication: episodes of 3x3 digits are 275 tokens, 6x6 800, so the 896-position mini
    model, and at mini a second stage as addition's mini-n3 (results/multiplication-mini-n3:
    after the first run's first stage, 77.7% at 3 digits and 2.5% sampled success on 4):
    2,000 steps with 2% of (n+1)-digit RL problems (the shipped multiplication-mini-n3).
    Path-star at mini: `_path_star_mini_recipe`."""
    if scale == "tiny":
        return [PretrainConfig(task=task, model="tiny", max_digits=n, eval_extra_digits=1,
                               batch_size=8, steps=12, warmup_steps=2, log_every=6,
                               eval_every=12, eval_problems=8, checkpoint_every=12)]
    if scale == "mini" and task == "path-star":
        return _path_star_mini_recipe(n, stage_dirs)
    model = {"mini": "mini-long" if task == "multiplication" else "mini", "paper": "paper"}
    first = PretrainConfig(task=task, model=model[scale], max_digits=n, eval_extra_digits=3,
                           steps=6000, warmup_steps=100, eval_every=250, checkpoint_every=250,
                           eval_rl_level=True,
                           dtype="bfloat16" if scale == "paper" else "float32")
    if scale == "mini" and task == "multiplication":
        return [first, dataclasses.replace(first, init_from=str(stage_dirs[0]), longer_share=0.02,
                                           steps=2000, learning_rate=5e-4, warmup_steps=50,
                                           final_learning_rate_ratio=0.1)]
    return [first]


def _path_star_mini_recipe(n: int, stage_dirs: list[Path]) -> list[PretrainConfig]:
    """The five runs that made path-star-mini-n5, each warm-started from the one before
    (results/pathstar-mini-n4, -d2, -d2-alone): degree 3, arms of 1-4 edges (6,000 steps,
    then 3,000 with the episode attention scope); degree 2, arms of 3 to n edges (6,000
    steps, episode scope: the edge lookup emerges inside packed streams); then each episode
    trained alone, positions from 0 as sampling runs it (2,000 + 3,000 steps). About 2 hours
    of a 2-core CPU. It describes those runs, so n = 5 only (its first stages stop at 4)."""
    if n != 5:
        raise ValueError(f"path-star's mini recipe is the one that made path-star-mini-n5: "
                         f"n=5 only, not n={n}")
    star3 = dict(task="path-star", model="mini", eval_extra_digits=3, checkpoint_every=250)
    star2 = dict(star3, task_params="degree=2,min_level=3", max_digits=n, warmup_steps=50,
                 final_learning_rate_ratio=0.1)
    return [
        PretrainConfig(**star3, max_digits=4, steps=6000, warmup_steps=100, eval_every=250),
        PretrainConfig(**star3, max_digits=4, init_from=str(stage_dirs[0]),
                       attention_scope="episode", steps=3000, learning_rate=1e-3,
                       warmup_steps=50, final_learning_rate_ratio=0.1, eval_every=250),
        PretrainConfig(**star2, init_from=str(stage_dirs[1]), attention_scope="episode",
                       steps=6000, learning_rate=1e-3, eval_every=500),
        PretrainConfig(**star2, init_from=str(stage_dirs[2]), attention_scope="alone",
                       steps=2000, learning_rate=5e-4, eval_every=250),
        PretrainConfig(**star2, init_from=str(stage_dirs[3]), attention_scope="alone",
                       steps=3000, learning_rate=5e-4, eval_every=500),
    ]


def recipe(scale: str, n: int, stage_dirs: list[Path], task: str = "addition"
           ) -> list[PretrainConfig]:
    """The pre-training stages of a `scale` model up to level n (stage i runs in stage_dirs[i]).
    Tasks other than addition: `_other_task_recipe`. Addition:

    tiny: a few steps, for tests. mini, n <= 4: stage 1 on problems up to n digits (the
    default recipe, 97% at n = 3 in 13 minutes here), then stage 2 as the shipped mini-n3's
    (docs/results.md): 100 steps of 16 streams with 2% of (n+1)-digit RL problems. mini, n >= 5 (the
    paper's setting): one stage of the mini model with a context for N+3 digits
    (`mini-long`), never shown a problem longer than n digits. paper: GPT-2 small dimensions
    in bfloat16 on a GPU/TPU.
    """
    if scale not in LEVEL["addition"]:
        raise ValueError(f"unknown scale {scale!r} (allowed: tiny, mini, paper)")
    if task != "addition":
        return _other_task_recipe(scale, n, task, stage_dirs)
    if scale == "tiny":
        return [PretrainConfig(model="tiny", max_digits=n, eval_extra_digits=1,
                                        batch_size=8, steps=12, warmup_steps=2, log_every=6,
                                        eval_every=12, eval_problems=8, checkpoint_every=12)]
    if scale == "mini" and n >= PAPER_SETTING_DIGITS:
        return [PretrainConfig(model="mini-long", max_digits=n, steps=12000, warmup_steps=200,
                               eval_every=500, checkpoint_every=200, eval_rl_level=True)]
    if scale == "mini":
        return [PretrainConfig(max_digits=n),
                PretrainConfig(max_digits=n, init_from=str(stage_dirs[0]),
                                        longer_share=0.02, batch_size=16, steps=100,
                                        learning_rate=5e-4,
                                        warmup_steps=10, checkpoint_every=50, eval_every=100)]
    return [PretrainConfig(model="paper", max_digits=n, dtype="bfloat16", batch_size=64,
                           steps=20000, learning_rate=3e-4, warmup_steps=1000)]


def _finished(run_dir: Path, config: PretrainConfig) -> bool:
    return checkpoint.latest_checkpoint_step(run_dir) == config.steps


def pretrained_source(scale: str, n: int, work_dir: str | Path, print_fn=print,
                      task: str = "addition") -> str:
    """What `critkl.runs.models.load_pretrained` loads for the `scale` model pre-trained up to
    n digits: the shipped model's name, or the run directory of its recipe's last stage
    (pre-trained, or resumed, first when it is not finished)."""
    name = model_name(task, scale, n)
    if name in shipped_names():
        print_fn(f"using the shipped model {name}")
        return name
    base = Path(work_dir) / "models" / name
    dirs = [base / f"stage{i + 1}" for i in range(MAX_STAGES)]
    stages = recipe(scale, n, dirs, task)
    for run_dir, config in zip(dirs, stages):
        train(run_dir, config, f"{name} ", print_fn)
    return str(dirs[len(stages) - 1])


def train(run_dir: Path, config: PretrainConfig, label: str = "", print_fn=print) -> None:
    """Pre-train `config` in run_dir unless finished there; resumes a run that was cut off."""
    if _finished(run_dir, config):
        return
    resume = checkpoint.latest_checkpoint_step(run_dir) is not None
    print_fn(f"pre-training {label}({'resuming ' if resume else ''}{run_dir}, "
             f"{config.steps} steps)")
    pretraining.pretrain(config, run_dir, resume=resume, print_fn=print_fn)


def pretrained_model(scale: str, n: int, work_dir: str | Path, print_fn=print,
                     task: str = "addition"):
    """(PretrainConfig, params) of the `scale` model of `task` pre-trained up to level n."""
    return load_pretrained(pretrained_source(scale, n, work_dir, print_fn, task))
