"""`critkl render`, `pretrain`, `eval`, `export` and `snapshot`: the commands of pre-trained
models."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from critkl.commands import flags, startup
from critkl.commands.flags import UsageError
from critkl.config import PretrainConfig
from critkl.tasks import registry


def add_parsers(commands, add_common) -> None:
    """The render, pretrain, eval, export and snapshot subcommands (add_common: the flags of
    commands that read checkpoints or train)."""
    render_ = commands.add_parser("render", help="print the episode text of a problem")
    render_.add_argument("problem", nargs="+", help="the problem as the task writes it "
                         "(addition: A B or A+B, e.g. 128 367)")
    render_.add_argument("--task", default=registry.DEFAULT, choices=sorted(registry.TASKS),
                         help=f"the task (default: {registry.DEFAULT})")
    render_.set_defaults(run=render)

    pretrain_ = commands.add_parser("pretrain", help="pre-train a model on problems up to N "
                                    "levels (addition: digits)")
    pretrain_.add_argument("--run-dir", required=True, type=flags.directory_name,
                           help="where config, checkpoints and logs go")
    pretrain_.add_argument("--resume", action="store_true", help="continue the run in --run-dir "
                           "with its saved config.json (flags given override it)")
    flags.add_field_flags(pretrain_, flags.fields(PretrainConfig()))
    add_common(pretrain_, train=True)
    pretrain_.set_defaults(run=pretrain)

    evaluate_ = commands.add_parser("eval", help="accuracy tables of a pre-trained model")
    evaluate_.add_argument("run_dir", help="a pre-training run directory or a shipped model name")
    evaluate_.add_argument("--problems", type=flags.int32_at_least(1), default=1000,
                           help="problems per cell (default 1000)")
    evaluate_.add_argument("--batch", type=flags.int32_at_least(1), default=500,
                           help="problems solved per sampler call (default 500)")
    evaluate_.add_argument("--rl-episodes", type=flags.int32_at_least(1), default=200,
                           help="sampled episodes per temperature (default 200)")
    evaluate_.add_argument("--seed", type=flags.seed, default=0,
                           help="seed of the problems and the sampling (default 0)")
    evaluate_.add_argument("--out", help="JSON report path (default RUN_DIR/eval.json)")
    add_common(evaluate_)
    evaluate_.set_defaults(run=evaluate)

    export_ = commands.add_parser("export", help="ship a run's model inside the package")
    export_.add_argument("run_dir", help="a pre-training run directory")
    export_.add_argument("name", help="name to load it by, e.g. mini-n4")
    export_.add_argument("--replace", action="store_true",
                         help="overwrite a shipped model of that name (default: refuse)")
    add_common(export_)
    export_.set_defaults(run=export)

    snapshot_ = commands.add_parser(
        "snapshot", help="keep a run's last checkpoint, config and logs in a new folder (to "
        "commit a run that is cut off; it resumes from there)")
    snapshot_.add_argument("run_dir", help="a pre-training or RL run directory")
    snapshot_.add_argument("dest", help="the new folder")
    snapshot_.set_defaults(run=snapshot)


def _config_from(args) -> PretrainConfig:
    try:
        return PretrainConfig(**flags.given(args, [f.name for f in dataclasses.fields(PretrainConfig)]))
    except ValueError as error:
        raise UsageError(str(error)) from None


def render(args) -> None:
    import jax

    try:
        task, problems = smallest_task_for(registry.task_class(args.task),
                                            " ".join(args.problem))
    except ValueError as error:
        raise UsageError(str(error)) from None
    episodes = jax.jit(task.render)(problems)
    sys.stdout.write(task.vocabulary.decode(episodes.tokens[0]))


def smallest_task_for(task_class, row: str):
    """(task, problems): the task of the lowest level whose arrays hold the problem written
    `row`; ValueError from the highest level the task can be built at when none does."""
    error = None
    for level in range(1, task_class.max_supported_level + 1):
        try:
            task = task_class(level, 0)
        except ValueError:
            break  # the task's other parameters allow no higher level
        try:
            return task, task.problems_from_text([row])
        except ValueError as failure:
            error = failure
    raise error


def saved_pretrain_config(run_dir: str, explicit: dict | None = None) -> PretrainConfig:
    """The PretrainConfig of a pre-training run's config.json (with `explicit` flags over it):
    a field unknown, of the wrong JSON type or out of range is one line naming the file, the
    field and what was expected."""
    from critkl.infra import checkpoint

    path = Path(run_dir) / checkpoint.CONFIG_FILE
    saved = checkpoint.load_config(run_dir)
    if not isinstance(saved, dict):
        raise UsageError(f"{path}: expected a JSON object of PretrainConfig fields")
    defaults = flags.fields(PretrainConfig())
    for name, value in saved.items():
        if name not in defaults:
            raise UsageError(f"{path}: unknown field {name!r} (expected PretrainConfig's: "
                             f"{', '.join(defaults)})")
        kind = type(defaults[name])
        fits = (isinstance(value, (int, float)) if kind is float else isinstance(value, kind))
        if not fits or (isinstance(value, bool) and kind is not bool):
            raise UsageError(f"{path}: field {name!r} is {value!r}, expected "
                             f"{'a number' if kind is float else 'type ' + kind.__name__}")
    try:
        return PretrainConfig.from_dict({**saved, **(explicit or {})})
    except ValueError as error:
        raise UsageError(f"{path}: {error}") from None


def check_pretrained(name_or_run_dir: str) -> None:
    """A pre-training run directory named instead of a shipped model: its config.json valid."""
    from critkl.runs import models

    if not models.is_shipped(name_or_run_dir) and Path(name_or_run_dir).is_dir():
        saved_pretrain_config(name_or_run_dir)


def pretrain(args) -> None:
    from critkl.runs import pretraining

    if args.resume:
        config = saved_pretrain_config(
            args.run_dir, flags.given(args, [f.name for f in dataclasses.fields(PretrainConfig)]))
    else:
        config = _config_from(args)
    startup.start_jax(args, config.batch_size)
    try:
        pretraining.check_sizes(config)
    except ValueError as error:
        raise UsageError(str(error)) from None
    pretraining.pretrain(config, args.run_dir, resume=args.resume,
                         print_fn=lambda line: print(line, flush=True))
    print(f"done: checkpoints and TensorBoard logs in {args.run_dir} "
          f"(tensorboard --logdir {Path(args.run_dir) / 'tensorboard'})")


def evaluate(args) -> None:
    import jax

    from critkl import evaluation
    from critkl.infra import files
    from critkl.runs import directory
    from critkl.runs.models import is_shipped, load_pretrained
    from critkl.infra.tracking import Tracker

    check_pretrained(args.run_dir)
    default_dir = Path("runs") / args.run_dir if is_shipped(args.run_dir) else Path(args.run_dir)
    out = Path(args.out) if args.out else default_dir / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)  # refused before minutes of evaluation, not after
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: its folder {out.parent} is not writable")
    config, params = load_pretrained(args.run_dir)
    check_evaluation_sizes(args, config)
    report = evaluation.accuracy_table(
        params, config.model_config, config.text_task, jax.random.key(args.seed),
        problems=args.problems, batch=args.batch, extra_digits=config.eval_extra_digits,
        rl_episodes=args.rl_episodes,
        progress=directory.Progress("accuracy batch", lambda line: print(line, flush=True)),
    )
    table = evaluation.markdown(report)
    print(table)
    files.write_atomic(out, json.dumps(report, indent=2))
    if not args.out:  # TensorBoard beside the run's own eval.json, nothing beside --out
        with Tracker(out.parent / "tensorboard") as tracker:
            tracker.text(0, "eval/table", table)
            tracker.scalars(0, {f"eval/{key}": cell["pass_at_1"]
                                for key, cell in report["cells"].items()})
    print(f"saved {out}")


def check_evaluation_sizes(args, config: PretrainConfig) -> None:
    """UsageError naming --batch when `eval`'s sampler calls (--batch problems, fewer when
    --problems and --rl-episodes are fewer) go beyond int32 indices or the device's memory."""
    import jax

    from critkl.infra import memory_budget

    task = config.text_task
    longest = task.at_level(task.n + config.eval_extra_digits).episode_limit()
    try:
        rows = min(args.batch, max(args.problems, args.rl_episodes))
        memory_budget.check_index(rows * longest, f"--batch {args.batch:,}", "lower --batch")
        memory_budget.check_fits(
            memory_budget.sampler_bytes(rows, longest, config.model_config),
            f"--batch {args.batch:,} (problems per sampler call, of up to {longest} tokens)",
            "lower --batch", jax.devices()[0])
    except ValueError as error:
        raise UsageError(str(error)) from None


def export(args) -> None:
    from critkl.runs.models import export

    try:
        folder = export(args.run_dir, args.name, replace=args.replace)
    except ValueError as error:
        raise UsageError(str(error)) from None
    print(f"exported the latest checkpoint of {args.run_dir} to {folder}; "
          f"load it with critkl.runs.models.load_pretrained({args.name!r})")


def snapshot(args) -> None:
    from critkl.infra import checkpoint
    from critkl.runs import directory

    try:
        step = directory.snapshot(args.run_dir, args.dest)
    except checkpoint.CheckpointError as error:
        raise UsageError(str(error)) from None
    print(f"kept step {step} of {args.run_dir} in {args.dest}; continue it with the run's own "
          f"command, --run-dir pointing at {args.dest} (or a copy of it), and --resume")
