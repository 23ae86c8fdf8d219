"""The `critkl` command line."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import shlex
import sys
from typing import Any
from pathlib import Path

from critkl.tasks import registry
from critkl.config import (DEFAULT_KL_COEF, CausalMapConfig, HYPER_NAMES, LossConfig,
                           PretrainConfig, RLConfig, RLHyper, STANDARD_KL, WEIGHTINGS,
                           check_seed, weighting_preset)

USAGE_ERROR = 2  # exit status for bad input


class UsageError(Exception):
    """Bad input from the user: printed as one paragraph, exit status 2."""


def start_jax(args, parallel_items: int) -> None:
    """Before a training command computes: one CPU device per core (`use_cpu_cores`,
    for this process's share of `parallel_items`), then join the other processes of
    a multi-process run (critkl.infra.distributed)."""
    from critkl.infra import distributed, parallel

    processes = max(args.num_processes or 1, 1)
    parallel.use_cpu_cores(parallel_items // processes if parallel_items % processes == 0 else 1)
    try:
        distributed.initialize(args)
    except distributed.DistributedError as error:
        raise UsageError(str(error)) from None


def _render(args) -> None:
    import jax

    try:
        task, problems = _smallest_task_for(registry.task_class(args.task),
                                            " ".join(args.problem))
    except ValueError as error:
        raise UsageError(str(error)) from None
    episodes = jax.jit(task.render)(problems)
    sys.stdout.write(task.vocabulary.decode(episodes.tokens[0]))


def _smallest_task_for(task_class, row: str):
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


def _add_field_flags(parser: argparse.ArgumentParser, defaults: dict[str, Any], *,
                     values: bool = False, note: str = "",
                     helps: dict[str, str] | None = None) -> None:
    """One --flag per setting (`defaults`: name -> default, e.g. a config's fields), parsed
    to the default's type, or as a comma-separated list of floats when `values` (a sweep's
    grid; one value for `finetune`). A flag not given is None, so that the config's own
    default applies (`_given`)."""
    for name, default in defaults.items():
        if values:
            kind, metavar = _list_of(float), "VALUES" if note else "FLOAT"
        elif isinstance(default, tuple):
            kind, metavar = _tuple_of(type(default[0])), "ITEMS"
        else:
            kind = _boolean if isinstance(default, bool) else type(default)
            metavar = type(default).__name__.upper()
        text = f"{(helps or {}).get(name, '')} (default {default})".lstrip()
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                            metavar=metavar, help=text + note)


def _fields(config) -> dict[str, Any]:
    """A config instance's fields and their values."""
    return {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}


def _given(args, names) -> dict[str, Any]:
    """The flags among `names` given on the command line, by name."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _config_from(args, config_class):
    try:
        return config_class(**_given(args, [f.name for f in dataclasses.fields(config_class)]))
    except ValueError as error:
        raise UsageError(str(error)) from None


def _saved_pretrain_config(run_dir: str, explicit: dict | None = None) -> PretrainConfig:
    """The PretrainConfig of a pre-training run's config.json (with `explicit` flags over it):
    a field unknown, of the wrong JSON type or out of range is one line naming the file, the
    field and what was expected."""
    from critkl.infra import checkpoint

    path = Path(run_dir) / checkpoint.CONFIG_FILE
    saved = checkpoint.load_config(run_dir)
    if not isinstance(saved, dict):
        raise UsageError(f"{path}: expected a JSON object of PretrainConfig fields")
    defaults = _fields(PretrainConfig())
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


def _causal_keys(path: str, task) -> tuple:
    """--causal-map's critical keys, checked against the model (pre-trained on `task` up to
    task.n) and the RL episodes (level task.max_level): one line naming the file and what is
    wrong."""
    from critkl.analysis import causal

    try:
        keys = causal.read_critical_keys(path, task, task.n)
        causal.check_keys_occur(task, keys, task.max_level)
    except (OSError, ValueError) as error:
        raise UsageError(f"--causal-map {path}: {error}") from None
    return keys


def _directory_name(value: str) -> str:
    """argparse type of --run-dir: a non-empty name (an empty one would be the current
    directory)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must name a directory, got an empty string (for the "
                                         "current directory write '.')")
    return value


def _check_pretrained(name_or_run_dir: str) -> None:
    """A pre-training run directory named instead of a shipped model: its config.json valid."""
    from critkl.runs import models

    if not models.is_shipped(name_or_run_dir) and Path(name_or_run_dir).is_dir():
        _saved_pretrain_config(name_or_run_dir)


def _pretrain(args) -> None:
    from critkl.runs import pretraining

    if args.resume:
        config = _saved_pretrain_config(
            args.run_dir, _given(args, [f.name for f in dataclasses.fields(PretrainConfig)]))
    else:
        config = _config_from(args, PretrainConfig)
    start_jax(args, config.batch_size)
    pretraining.pretrain(config, args.run_dir, resume=args.resume,
                         print_fn=lambda line: print(line, flush=True))
    print(f"done: checkpoints and TensorBoard logs in {args.run_dir} "
          f"(tensorboard --logdir {Path(args.run_dir) / 'tensorboard'})")


def _evaluate(args) -> None:
    import jax

    from critkl import evaluation
    from critkl.infra import files
    from critkl.runs import directory
    from critkl.runs.models import is_shipped, load_pretrained
    from critkl.infra.tracking import Tracker

    _check_pretrained(args.run_dir)
    config, params = load_pretrained(args.run_dir)
    report = evaluation.accuracy_table(
        params, config.model_config, config.text_task, jax.random.key(args.seed),
        problems=args.problems, batch=args.batch, extra_digits=config.eval_extra_digits,
        rl_episodes=args.rl_episodes,
        progress=directory.Progress("accuracy batch", lambda line: print(line, flush=True)),
    )
    table = evaluation.markdown(report)
    print(table)
    default_dir = Path("runs") / args.run_dir if is_shipped(args.run_dir) else Path(args.run_dir)
    out = Path(args.out) if args.out else default_dir / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(out, json.dumps(report, indent=2))
    if not args.out:  # TensorBoard beside the run's own eval.json, nothing beside --out
        with Tracker(out.parent / "tensorboard") as tracker:
            tracker.text(0, "eval/table", table)
            tracker.scalars(0, {f"eval/{key}": cell["pass_at_1"]
                                for key, cell in report["cells"].items()})
    print(f"saved {out}")


def _export(args) -> None:
    from critkl.runs.models import export

    try:
        folder = export(args.run_dir, args.name, replace=args.replace)
    except ValueError as error:
        raise UsageError(str(error)) from None
    print(f"exported the latest checkpoint of {args.run_dir} to {folder}; "
          f"load it with critkl.runs.models.load_pretrained({args.name!r})")


def _snapshot(args) -> None:
    from critkl.infra import checkpoint
    from critkl.runs import directory

    try:
        step = directory.snapshot(args.run_dir, args.dest)
    except checkpoint.CheckpointError as error:
        raise UsageError(str(error)) from None
    print(f"kept step {step} of {args.run_dir} in {args.dest}; continue it with the run's own "
          f"command, --run-dir pointing at {args.dest} (or a copy of it), and --resume")


def _list_of(kind):
    """argparse type: a comma-separated list of `kind` values."""
    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of {kind.__name__} values") from None
    return parse


def _tuple_of(kind):
    """Parse "a,b" into a tuple of `kind`."""
    return lambda text: tuple(_list_of(kind)(text))


def _boolean(text: str) -> bool:
    """argparse type: true/false (also 1/0, yes/no); any other word is refused."""
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    try:
        return words[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a boolean (allowed: true, false, 1, 0, yes, no)") from None


def _seed(text: str) -> int:
    """argparse type: a seed (`config.check_seed`)."""
    try:
        seed = int(text)
        check_seed("seed", seed)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error) if text.strip().lstrip("-").isdigit()
                                         else f"{text!r} is not an integer") from None
    return seed


def _at_least(low: int):
    """argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


# RLConfig fields set otherwise: n from the pre-trained model, loss from LossConfig's flags,
# causal_keys from --causal-map.
_RL_FIELDS_WITHOUT_FLAGS = ("loss", "n", "causal_keys")


def _finetune(args) -> None:
    import jax

    from critkl import rl
    from critkl.infra import memory_budget
    from critkl.runs import finetuning
    from critkl.runs.models import load_pretrained

    rl_values = _given(args, [f.name for f in dataclasses.fields(RLConfig)
                              if f.name not in _RL_FIELDS_WITHOUT_FLAGS])
    loss_values = _given(args, [f.name for f in dataclasses.fields(LossConfig)])
    grid = _given(args, HYPER_NAMES)
    if args.weighting:
        fields, values = weighting_preset(args.weighting)
        loss_values = {**fields, **loss_values}
        grid = {**{name: [value] for name, value in values.items()}, **grid}
    if args.command == "finetune":
        many = [name for name, values in grid.items() if len(values) > 1]
        if many or len(args.seeds) > 1:
            raise UsageError(f"finetune runs one configuration; use `critkl sweep` for lists "
                             f"({', '.join(many + (['seeds'] if len(args.seeds) > 1 else []))})")
    try:
        loss_config = LossConfig(**loss_values)
        runs = finetuning.grid_runs(args.seeds, grid, RLHyper())
    except ValueError as error:
        raise UsageError(str(error)) from None
    start_jax(args, len(runs))  # before loading the model, which may compute
    _check_pretrained(args.pretrained)
    try:
        pre_config, params = load_pretrained(args.pretrained)
        for field in ("task", "task_params"):  # the pre-trained model's
            given = rl_values.setdefault(field, getattr(pre_config, field))
            if given != getattr(pre_config, field):
                raise ValueError(f"--{field.replace('_', '-')} {given}: {args.pretrained} was "
                                 f"pre-trained with {field}={getattr(pre_config, field)!r}")
        config = RLConfig(n=pre_config.max_digits, loss=loss_config, **rl_values)
        if args.causal_map:
            config = dataclasses.replace(
                config, causal_keys=_causal_keys(args.causal_map, config.text_task))
        config.check_model(pre_config.model_config)
        memory_budget.check_fits(
            len(runs) * rl.run_bytes(config, config.run_model(pre_config.model_config)),
            f"an iteration of {len(runs)} run(s) (--seeds and the grid) of RLConfig.episodes="
            f"{config.episodes} episodes of up to {config.max_length} tokens",
            "lower --episodes or the number of runs", jax.devices()[0])
    except ValueError as error:
        raise UsageError(str(error)) from None
    saved = {"pretrained": args.pretrained, "rl": dataclasses.asdict(config),
             "seeds": args.seeds, "grid": grid}
    results = finetuning.finetune(config, runs, params, pre_config.model_config, args.run_dir,
                                resume=args.resume, print_fn=lambda line: print(line, flush=True),
                                saved_config=saved)
    print(finetuning.markdown_summary(results))
    print(f"results: {Path(args.run_dir) / 'results.json'}; "
          f"tensorboard --logdir {Path(args.run_dir) / 'tensorboard'}")


def _plot(args) -> None:
    from critkl.runs import finetuning, plots
    from critkl.runs.outputs import Output

    path = Path(args.run_dir) / "results.json"
    try:
        results = json.loads(path.read_text())
        if args.add:
            results = finetuning.merge(
                [results] + [json.loads((Path(d) / "results.json").read_text()) for d in args.add])
        finetuning.check_results(results)
        results["summary"] = finetuning.summary(results)
        rl_config = json.loads((Path(args.run_dir) / "config.json").read_text())["rl"]
        if not type(rl_config["n"]) is type(rl_config["extra_digits"]) is int:
            raise ValueError("config.json's rl.n and rl.extra_digits must be integers")
        digits = rl_config["n"] + rl_config["extra_digits"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise UsageError(f"{args.run_dir} is not a sweep's run directory with results.json "
                         f"and config.json: {error}") from None
    output = Output(Path(args.out) if args.out else Path(args.run_dir))
    try:
        plots.plot_sweep(digits, results, output)
        output.markdown("summary.md", finetuning.markdown_summary(results))
        settings = {run["setting"] for run in results["runs"]}
        if args.baseline in settings:
            output.markdown("differences.md", finetuning.markdown_differences(results, args.baseline))
    finally:
        output.close()
    print(finetuning.markdown_summary(results))
    print(f"saved {output.folder}: " + ", ".join(sorted(p.name for p in output.written)))


def _launch(args) -> None:
    from critkl.infra.launch import launch

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    if not command:
        raise UsageError("give the command to run after --, e.g. critkl launch --processes 2 "
                         "-- critkl pretrain --run-dir runs/two --model tiny")
    cpu_devices = (max(1, (os.cpu_count() or 1) // max(args.processes, 1))
                   if args.cpu_devices is None else args.cpu_devices)
    if args.processes < 1 or cpu_devices < 1 or args.gpus_per_process < 0:
        raise UsageError(f"--processes ({args.processes}) and --cpu-devices ({cpu_devices}) "
                         f"must be >= 1, --gpus-per-process ({args.gpus_per_process}) >= 0")
    status = launch(command, args.processes, cpu_devices, args.gpus_per_process)
    if status:
        raise SystemExit(status)


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """The multi-process flags of a training command (`critkl.infra.distributed`)."""
    from critkl.infra import distributed

    group = parser.add_argument_group(
        "multi-process runs", "give all three to every process (`critkl launch` does it for "
        "local processes); on a Cloud TPU VM they are read from the TPU metadata")
    group.add_argument("--coordinator", metavar="HOST:PORT",
                       help="address of process 0, where the coordination service listens "
                       "(default: none, one process)")
    group.add_argument("--num-processes", type=int, metavar="N",
                       help="number of processes (default 1)")
    group.add_argument("--process-id", type=int, metavar="I",
                       help="this process, 0..N-1 (default 0)")
    group.add_argument("--heartbeat-timeout", type=int, default=distributed.HEARTBEAT_TIMEOUT,
                       metavar="SECONDS", help="a process silent this long is declared dead "
                       f"and the others stop (default {distributed.HEARTBEAT_TIMEOUT})")


def _add_finetune_flags(parser: argparse.ArgumentParser, lists: bool) -> None:
    parser.add_argument("pretrained", help="a shipped model name (e.g. mini-n3) or a pre-training run dir")
    parser.add_argument("--run-dir", required=True, type=_directory_name,
                        help="where results, checkpoints and logs go")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    _add_distributed_flags(parser)
    parser.add_argument("--seeds", type=_list_of(int), default=[0],
                        help=("comma-separated seeds" if lists else "the seed (one)") + " (default 0)")
    parser.add_argument("--weighting", choices=list(WEIGHTINGS),
                        help="a named per-token weighting (README, 'Beyond the paper'): sets "
                        "weight-signal, weight-rule, weight-targets and its numeric values "
                        "unless given (default: the flags' defaults, the paper's prioritized KL)")
    parser.add_argument("--causal-map", metavar="CRITICAL_JSON",
                        help="critical.json of `critkl critical` for this model: evaluations "
                        "report p(right) at its causally critical tokens (default: none)")
    rl_fields = {name: value for name, value in _fields(RLConfig()).items()
                 if name not in _RL_FIELDS_WITHOUT_FLAGS}
    _add_field_flags(parser, {**rl_fields, **_fields(LossConfig())})
    hyper = RLHyper()
    _add_field_flags(parser, {name: getattr(hyper if hasattr(hyper, name) else hyper.loss, name)
                              for name in HYPER_NAMES}, values=True,
                     note=" (comma-separated values: a grid)" if lists else "")


def _experiment(args) -> None:
    import experiments

    name, scale = (("main", args.name) if args.name in experiments.SCALES
                   else (args.name, args.scale))
    if name not in experiments.EXPERIMENTS:
        raise UsageError(f"unknown experiment {name!r}; choose one of "
                         f"{', '.join(experiments.EXPERIMENTS)}, or a scale "
                         f"({', '.join(experiments.SCALES)}) for the main job")
    if scale not in experiments.SCALES:
        raise UsageError(f"--scale must be one of {', '.join(experiments.SCALES)}, got {scale!r}")
    try:
        experiments.check(name, scale, args.task)
    except ValueError as error:
        raise UsageError(str(error)) from None
    start_jax(args, 2)  # every sweep and pre-training batch of the entries is even
    print(f"critkl experiment {name} at {scale} scale: {experiments.EXPERIMENTS[name].result}",
          flush=True)
    experiments.run(name, scale, args.out, print_fn=lambda line: print(line, flush=True),
                    task=args.task)


def _analyze(args) -> None:
    from critkl.analysis import certainty, report
    from critkl.runs.outputs import Output
    from critkl.runs.models import load_pretrained

    config, params = load_pretrained(args.model)
    if args.episodes < 1 or args.shown < 1:
        raise UsageError(f"--episodes ({args.episodes}) and --shown ({args.shown}) must be >= 1")
    out = Path(args.out) if args.out else Path("runs") / f"analyze-{Path(args.model).name}"
    output = Output(out)
    pages = []
    try:
        table = report.analyze_model(
            params, config.model_config, config.text_task, output, episodes=args.episodes,
            shown=args.shown, pages=pages, terminal=sys.stdout.isatty())
        report.write(output, [table], pages, config.text_task.vocabulary)
    finally:
        output.close()
    print(certainty.certainty_markdown([table]))
    print(f"saved {out}: table1.md, certainty.json, episodes.html (open it in a browser), "
          f"certainty_n{config.max_digits}.png; tensorboard --logdir {out}")


def _critical(args) -> None:
    from critkl.analysis import causal
    from critkl.infra import files, memory_budget, provenance
    from critkl.runs import directory
    from critkl.runs.models import load_pretrained

    config, params = load_pretrained(args.model)
    try:
        settings = CausalMapConfig(**_given(args, _fields(CausalMapConfig())))
    except ValueError as error:
        raise UsageError(f"--{str(error).replace('_', '-')}") from None
    n = config.max_digits
    level = config.text_task.rl_level if args.level is None else args.level
    if level < n:
        raise UsageError(f"--level {level}: allowed N={n} (the pre-trained level) or more")
    try:
        task = config.text_task.at_level(level)
    except ValueError as error:
        raise UsageError(f"--level {level}: {error}") from None
    if task.max_episode_length() > config.model_config.context_length:
        raise UsageError(f"--level {level}: episodes of {task.max_episode_length()} tokens do "
                         f"not fit the model's {config.model_config.context_length} positions")
    try:  # the problems' logits and log-probabilities, float32 [problems, L, vocabulary]
        memory_budget.check_fits(
            settings.problems * task.max_episode_length() * config.model_config.vocab_size * 12,
            f"--problems {settings.problems}", "lower --problems")
    except ValueError as error:
        raise UsageError(str(error)) from None
    out = Path(args.out) if args.out else Path("runs") / f"critical-{Path(args.model).name}"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the output folder {out}: {error.strerror}") from None
    progress = directory.Progress("forced continuations, sampler call",
                                  lambda line: print(line, flush=True))
    print(f"critkl critical {args.model}: {settings.problems} {config.task} problems of level "
          f"{level}, decisions with p(right) < {settings.forced_below} forced right and wrong",
          flush=True)
    rows = causal.causal_map(params, config.model_config, config.text_task, settings, progress,
                             level)
    record = {**provenance.record(), "model": args.model, "task": config.task, "n": n,
              "level": level, "settings": dataclasses.asdict(settings), "rows": rows}
    files.write_atomic(out / "critical.json", json.dumps(record, indent=1) + "\n")
    table = causal.markdown(rows, kl_coef=args.kl_coef)
    files.write_atomic(out / "critical.md", table)
    causal.plot(rows, out / "critical.png")
    print(table)
    print(f"saved {out}: critical.json, critical.md, critical.png")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="critkl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    render = commands.add_parser("render", help="print the episode text of a problem")
    render.add_argument("problem", nargs="+",
                        help="the problem as the task writes it (addition: A B or A+B, e.g. 128 367)")
    render.add_argument("--task", default=registry.DEFAULT, choices=sorted(registry.TASKS),
                        help=f"the task (default: {registry.DEFAULT})")
    render.set_defaults(run=_render)

    pretrain = commands.add_parser("pretrain", help="pre-train a model on problems up to N digits")
    pretrain.add_argument("--run-dir", required=True, type=_directory_name,
                          help="where config, checkpoints and logs go")
    pretrain.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    _add_field_flags(pretrain, _fields(PretrainConfig()))
    _add_distributed_flags(pretrain)
    pretrain.set_defaults(run=_pretrain)

    evaluate = commands.add_parser("eval", help="accuracy tables of a pre-trained model")
    evaluate.add_argument("run_dir", help="a pre-training run directory or a shipped model name")
    evaluate.add_argument("--problems", type=_at_least(1), default=1000,
                          help="problems per cell (default 1000)")
    evaluate.add_argument("--batch", type=_at_least(1), default=500,
                          help="problems solved per sampler call (default 500)")
    evaluate.add_argument("--rl-episodes", type=_at_least(1), default=200,
                          help="sampled episodes per temperature (default 200)")
    evaluate.add_argument("--seed", type=_seed, default=0,
                          help="seed of the problems and the sampling (default 0)")
    evaluate.add_argument("--out", help="JSON report path (default RUN_DIR/eval.json)")
    evaluate.set_defaults(run=_evaluate)

    export = commands.add_parser("export", help="ship a run's model inside the package")
    export.add_argument("run_dir", help="a pre-training run directory")
    export.add_argument("name", help="name to load it by, e.g. mini-n4")
    export.add_argument("--replace", action="store_true",
                        help="overwrite a shipped model of that name (default: refuse)")
    export.set_defaults(run=_export)

    snapshot = commands.add_parser(
        "snapshot", help="keep a run's last checkpoint, config and logs in a new folder (to "
        "commit a run that is cut off; it resumes from there)")
    snapshot.add_argument("run_dir", help="a pre-training or RL run directory")
    snapshot.add_argument("dest", help="the new folder")
    snapshot.set_defaults(run=_snapshot)

    finetune = commands.add_parser("finetune", help="RL fine-tuning of a pre-trained model")
    _add_finetune_flags(finetune, lists=False)
    finetune.set_defaults(run=_finetune)
    sweep = commands.add_parser("sweep", help="seeds x hyperparameter grid, vmapped in one program")
    _add_finetune_flags(sweep, lists=True)
    sweep.set_defaults(run=_finetune)
    plot = commands.add_parser(
        "plot", help="tables and plots of a sweep's results.json (mean and 95%% interval over "
        "seeds, and each setting minus a baseline, paired by seed)")
    plot.add_argument("run_dir", help="the sweep's run directory")
    plot.add_argument("--baseline", default=STANDARD_KL,
                      help=f"setting the others are compared with (default {STANDARD_KL})")
    plot.add_argument("--add", action="append", metavar="RUN_DIR",
                      help="another sweep of the same RL settings, merged in (settings renamed by "
                      "the hyperparameters that differ; repeat for more; default: none)")
    plot.add_argument("--out", help="output folder (default: the run directory)")
    plot.set_defaults(run=_plot)
    experiment = commands.add_parser(
        "experiment", help="run one of the paper's experiments (or the main job: mini, tiny, paper)")
    experiment.add_argument("name", help="main, paper-setting, certainty, accuracy, levels, "
                            "critical, beta, mechanism, detectors, weightings, frontier; or a "
                            "scale (mini, tiny, paper) for the main job at that scale")
    experiment.add_argument("--scale", default="mini", help="tiny, mini (CPU) or paper (GPU/TPU) (default mini)")
    experiment.add_argument("--task", default=registry.DEFAULT, choices=sorted(registry.TASKS),
                            help="the task of the models (default addition; the main job "
                            "takes any task, the other entries addition)")
    experiment.add_argument("--out", default="runs/experiments",
                            help="output folder (models pre-trained here are reused; default "
                            "runs/experiments)")
    _add_distributed_flags(experiment)
    experiment.set_defaults(run=_experiment)

    analyze = commands.add_parser(
        "analyze", help="certainty of a model on (N+1)-digit episodes: Table 1, coloured episodes")
    analyze.add_argument("model", help="a shipped model name (e.g. mini-n3) or a pre-training run dir")
    analyze.add_argument("--episodes", type=int, default=50,
                         help="episodes for the statistics (default 50)")
    analyze.add_argument("--shown", type=int, default=4,
                         help="episodes coloured and plotted (default 4)")
    analyze.add_argument("--out", help="output folder (default runs/analyze-MODEL)")
    analyze.set_defaults(run=_analyze)

    critical = commands.add_parser(
        "critical", help="causal critical-token map: force each uncertain decision right, then "
        "wrong, and compare the success of the continuations")
    critical.add_argument("model", help="a shipped model name (e.g. mini-n3) or a pre-training run dir")

    _add_field_flags(critical, _fields(CausalMapConfig()), helps={
        "problems": "fixed problems, both operands N+1 digits",
        "temperature": "temperature of the sampled continuations (the RL temperature)",
        "beta": "exponent of the certainty in the KL weight w",
        "certainty_temperature": "temperature of the reference in the certainty",
        "forced_below": "force only decisions whose mean p(right) is below this",
        "batch": "continuations per sampler call",
        "seed": "seed of the problems and the sampled continuations"})
    critical.add_argument("--kl-coef", type=float, default=DEFAULT_KL_COEF,
                          help="KL coefficient of the predicted optimum in the table "
                               f"(default {DEFAULT_KL_COEF:g})")
    critical.add_argument("--level", type=int,
                          help="the level of the problems (default the task's RL level: N+1, "
                               "the paper's; N for path-star)")
    critical.add_argument("--out", help="output folder (default runs/critical-MODEL)")
    critical.set_defaults(run=_critical)

    launch = commands.add_parser(
        "launch", help="run a training command as several JAX processes on this machine",
        description="Start N processes of COMMAND on this machine, joined into one JAX program "
        "(multi-process runs on a CPU, or one process per GPU); when one fails, the others "
        "are stopped.")
    launch.add_argument("--processes", type=int, required=True, help="number of processes")
    launch.add_argument("--cpu-devices", type=int,
                        help="CPU devices per process (default: the cores over the processes)")
    launch.add_argument("--gpus-per-process", type=int, default=0,
                        help="GPUs per process on a multi-GPU machine (default 0: CPU devices)")
    launch.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                        help="the training command, e.g. -- critkl pretrain --run-dir runs/x")
    launch.set_defaults(run=_launch)
    for name in ("pretrain", "eval", "export", "finetune", "sweep", "analyze", "critical",
                 "experiment"):  # the commands that read checkpoints
        commands.choices[name].add_argument(
            "--allow-undigested", action="store_true",
            help="restore checkpoints that have no SHA-256 digest, saved before critkl "
            "recorded them (default: such a checkpoint is refused as unverifiable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    from critkl.infra import provenance

    provenance.set_command(argv)
    from critkl.infra.checkpoint import CheckpointError, allow_undigested
    from critkl.infra.parallel import BatchSplitError
    from critkl.runs.divergence import TrainingDiverged
    from critkl.runs.preemption import PREEMPTED_EXIT, Preempted

    if getattr(args, "allow_undigested", False):
        allow_undigested()
    try:
        _check_platforms()
        args.run(args)
    except Preempted as stop:  # saved: the same command, resuming, continues it
        again = argv + (["--resume"] if hasattr(args, "resume") and not args.resume else [])
        print(f"critkl {args.command}: {stop}; continue with: critkl {shlex.join(again)}",
              file=sys.stderr, flush=True)
        return PREEMPTED_EXIT
    except (UsageError, CheckpointError, TrainingDiverged, BatchSplitError) as error:
        print(f"critkl {args.command}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except (OSError, UnicodeDecodeError) as error:  # the one I/O boundary of every command
        print(f"critkl {args.command}: error: {describe_io_error(error)}", file=sys.stderr)
        return USAGE_ERROR
    return 0


def _check_platforms() -> None:
    """A JAX_PLATFORMS naming an accelerator this machine lacks: one line, before any work.
    (Starting JAX here fixes the CPU devices early, which only a CPU run would mind: "cpu"
    alone is not checked.)"""
    platforms = [p for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if not platforms or platforms == ["cpu"]:
        return
    import jax

    try:
        jax.devices()
    except Exception as error:  # JAX raises RuntimeError or AssertionError, by platform
        reason = str(error).splitlines()[0] if str(error) else "no such backend here"
        raise UsageError(f"JAX_PLATFORMS={','.join(platforms)!r} names a platform JAX cannot "
                         f"start on this machine ({reason}); unset it, or set "
                         "JAX_PLATFORMS=cpu") from None


def describe_io_error(error: OSError | UnicodeDecodeError) -> str:
    """One sentence for a file that could not be read or written: what, where, what to do."""
    if isinstance(error, UnicodeDecodeError):
        return (f"a file is not valid UTF-8 text ({error.reason} at byte {error.start}); it is "
                "damaged or not a file critkl wrote")
    where = " -> ".join(repr(os.fspath(name)) for name in (error.filename, error.filename2)
                        if name is not None)
    advice = {
        errno.ENOSPC: "free some space (a run resumes with --resume, losing nothing saved)",
        errno.ENOTDIR: "a path given as a folder is a file, or is inside one",
        errno.EISDIR: "a path given as a file is a folder",
        errno.EEXIST: "a file is in the way of a folder to be created",
        errno.EACCES: "check the permissions, or choose another path",
        errno.EROFS: "the file system is read-only: choose another path",
        errno.ENOENT: "check the path (and that its parent folder exists)",
    }.get(error.errno, "check the path and the disk")
    return f"{error.strerror or error}{f' ({where})' if where else ''}: {advice}"


if __name__ == "__main__":
    sys.exit(main())
