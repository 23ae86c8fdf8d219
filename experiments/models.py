"""Pre-trained models for experiments: shipped ones, or made by a documented recipe.

`pretrained_model(scale, n, work_dir)` returns the model of that scale pre-trained up to n
digits: the shipped `{scale}-n{n}` when the package has it, else the result of the
scale's recipe (`recipe(scale, n)`), trained under work_dir/models and reused (or
resumed, when cut off) by later experiments.
"""

from __future__ import annotations

from pathlib import Path

from critkl.infra import checkpoint
from critkl.runs import pretraining
from critkl.config import PretrainConfig
from critkl.runs.models import load_pretrained, shipped_names


# From this many digits up, a mini model is pre-trained as in the paper: no longer problems.
PAPER_SETTING_DIGITS = 5


def recipe(scale: str, n: int, stage_dirs: list[Path]) -> list[PretrainConfig]:
    """The pre-training stages of a `scale` model up to n digits (stage i runs in stage_dirs[i]).

    tiny: a few steps, for tests. mini, n <= 4: stage 1 on problems up to n digits (the
    default recipe, 97% at n = 3 in 13 minutes here), then stage 2 as the shipped mini-n3's
    (docs/results.md): 100 steps of 16 streams with 2% of (n+1)-digit RL problems. mini, n >= 5 (the
    paper's setting): one stage of the mini model with a context for N+3 digits
    (`mini-long`), never shown a problem longer than n digits. paper: GPT-2 small dimensions
    in bfloat16 on a GPU/TPU.
    """
    if scale == "tiny":
        return [PretrainConfig(model="tiny", max_digits=n, eval_extra_digits=1,
                                        batch_size=8, steps=12, warmup_steps=2, log_every=6,
                                        eval_every=12, eval_problems=8, checkpoint_every=12)]
    if scale == "mini" and n >= PAPER_SETTING_DIGITS:
        return [PretrainConfig(model="mini-long", max_digits=n, steps=12000, warmup_steps=200,
                               eval_every=500, checkpoint_every=200)]
    if scale == "mini":
        return [PretrainConfig(max_digits=n),
                PretrainConfig(max_digits=n, init_from=str(stage_dirs[0]),
                                        longer_share=0.02, batch_size=16, steps=100,
                                        learning_rate=5e-4,
                                        warmup_steps=10, checkpoint_every=50, eval_every=100)]
    if scale == "paper":
        return [PretrainConfig(model="paper", max_digits=n, dtype="bfloat16",
                                        batch_size=64, steps=20000, learning_rate=3e-4,
                                        warmup_steps=1000)]
    raise ValueError(f"unknown scale {scale!r} (allowed: tiny, mini, paper)")


def _finished(run_dir: Path, config: PretrainConfig) -> bool:
    return checkpoint.latest_checkpoint_step(run_dir) == config.steps


def pretrained_source(scale: str, n: int, work_dir: str | Path, print_fn=print) -> str:
    """What `critkl.runs.models.load_pretrained` loads for the `scale` model pre-trained up to
    n digits: the shipped model's name, or the run directory of its recipe's last stage
    (pre-trained, or resumed, first when it is not finished)."""
    name = f"{scale}-n{n}"
    if name in shipped_names():
        print_fn(f"using the shipped model {name}")
        return name
    base = Path(work_dir) / "models" / name
    dirs = [base / f"stage{i + 1}" for i in range(2)]
    stages = recipe(scale, n, dirs)
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


def pretrained_model(scale: str, n: int, work_dir: str | Path, print_fn=print):
    """(PretrainConfig, params) of the `scale` model pre-trained up to n digits."""
    return load_pretrained(pretrained_source(scale, n, work_dir, print_fn))
