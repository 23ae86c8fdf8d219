"""`critkl finetune`, `critkl sweep` and `critkl plot`: a `Sweep` spec from a config file,
flags and `key=value` overrides, run by `critkl.runs.spec.run_sweep`."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from critkl.commands import flags, startup
from critkl.commands.flags import UsageError
from critkl.config import HYPER_NAMES, STANDARD_KL, RLConfig, RLHyper
from critkl.loss_config import WEIGHTINGS, LossConfig, weighting_preset
from critkl.runs import config_files
from critkl.runs.spec import Sweep

# RLConfig fields set otherwise: n from the pre-trained model, loss from LossConfig's flags,
# causal_keys from --causal-map.
RL_FIELDS_WITHOUT_FLAGS = ("loss", "n", "causal_keys")
RL_FLAGS = tuple(f.name for f in dataclasses.fields(RLConfig) if f.name not in RL_FIELDS_WITHOUT_FLAGS)
LOSS_FLAGS = tuple(f.name for f in dataclasses.fields(LossConfig))


def add_parsers(commands, add_common) -> None:
    """The finetune, sweep and plot subcommands; add_common(parser) adds the flags every
    training command shares (multi-process, checkpoints)."""
    for name, lists, text in (
            ("finetune", False, "RL fine-tuning of a pre-trained model (one run)"),
            ("sweep", True, "seeds x hyperparameter grid, vmapped in one program")):
        parser = commands.add_parser(name, help=text, description=text + ". Settings come "
                                     "from --config, then the flags, then key=value overrides.")
        add_flags(parser, lists)
        add_common(parser)
        parser.set_defaults(run=finetune)
    plot = commands.add_parser(
        "plot", help="tables and plots of a sweep's results.json (mean and 95%% interval over "
        "seeds, and each setting minus a baseline, paired by seed)")
    plot.add_argument("run_dir", help="the sweep's run directory")
    plot.add_argument("--baseline", help="the setting the others are compared with, as the "
                      "sweep names it (default: the standard KL, beta=0, when the sweep has it)")
    plot.add_argument("--add", action="append", metavar="RUN_DIR",
                      help="another sweep of the same RL settings, merged in (settings renamed by "
                      "the hyperparameters that differ; repeat for more; default: none)")
    plot.add_argument("--out", help="output folder (default: the run directory)")
    plot.set_defaults(run=plot_sweep)


def add_flags(parser: argparse.ArgumentParser, lists: bool) -> None:
    parser.add_argument("pretrained", nargs="?", help="a shipped model name (e.g. mini-n3) or a "
                        "pre-training run dir (default: the config file's, else mini-n3)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="settings by their config path, after everything else: "
                        "rl.episodes=64, base.loss.kl_coef=0.5, grid.beta=0,150, seeds=0,1")
    parser.add_argument("--run-dir", required=True, type=flags.directory_name,
                        help="where results, checkpoints and logs go")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir "
                        "with its saved config.json (settings given again must equal it)")
    parser.add_argument("--config", metavar="FILE", help="a TOML or JSON file of settings "
                        "(a run's config.json is one; README, 'Config files'; default: none)")
    parser.add_argument("--seeds", type=flags.list_of(int), help=(
        "comma-separated seeds, one run each" if lists else "the seed (one)") + " (default 0)")
    parser.add_argument("--weighting", choices=list(WEIGHTINGS), help=(
        "a named per-token weighting (README, 'Beyond the paper'): sets weight-signal, "
        "weight-rule, weight-targets and its numeric values unless given (default: the "
        "flags' defaults, the paper's prioritized KL)"))
    parser.add_argument("--causal-map", metavar="CRITICAL_JSON", help=(
        "critical.json of `critkl critical` for this model: evaluations report p(right) at "
        "its causally critical tokens (default: none)"))
    flags.add_field_flags(parser, {n: getattr(RLConfig(), n) for n in RL_FLAGS})
    flags.add_field_flags(parser, flags.fields(LossConfig()))
    hyper = RLHyper()
    flags.add_field_flags(parser, {n: getattr(hyper if hasattr(hyper, n) else hyper.loss, n)
                                   for n in HYPER_NAMES}, values=lists)


def spec_from(args) -> Sweep:
    """The Sweep of a finetune or sweep command line: the saved config.json (--resume), the
    --config file, the flags, then the overrides, each over the one before."""
    overrides = list(args.overrides)
    if args.pretrained and "=" in args.pretrained:  # no model named: an override came first
        overrides.insert(0, args.pretrained)
        args.pretrained = None
    values = {}
    try:
        if args.resume:
            from critkl.infra import checkpoint
            values = checkpoint.load_config(args.run_dir)
        if args.config:
            values = config_files.merge(values, config_files.read(args.config))
        values = config_files.merge(values, _flag_values(args))
        defaults = Sweep().to_dict()
        for text in overrides:
            values = config_files.merge(values, config_files.parse_override(text, defaults))
        spec = Sweep.from_dict(values)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.command == "finetune" and (len(spec.runs()) > 1):
        many = [name for name, v in spec.grid if len(v) > 1] + (
            ["seeds"] if len(spec.seeds) > 1 else [])
        raise UsageError(f"finetune runs one configuration; use `critkl sweep` for lists "
                         f"({', '.join(many)})")
    return spec


def _flag_values(args) -> dict:
    """The flags given, nested as in Sweep.to_dict (hyperparameters as grid entries)."""
    rl = flags.given(args, RL_FLAGS)
    loss = flags.given(args, LOSS_FLAGS)
    grid = flags.given(args, HYPER_NAMES)
    grid = {name: v if isinstance(v, list) else [v] for name, v in grid.items()}
    if args.weighting:
        fields, preset = weighting_preset(args.weighting)
        loss = {**fields, **loss}
        grid = {**{name: [value] for name, value in preset.items()}, **grid}
    values = {"rl": {**rl, **({"loss": loss} if loss else {})}} if rl or loss else {}
    if grid:
        values["grid"] = grid
    if args.seeds is not None:
        values["seeds"] = args.seeds
    if args.pretrained:
        values["pretrained"] = args.pretrained
    return values


def _with_causal_map(spec: Sweep, path: str, pre_config) -> Sweep:
    """--causal-map's critical keys, checked against the model and the RL episodes."""
    from critkl.analysis import causal
    from critkl.runs.spec import model_spec

    task = model_spec(spec, pre_config).rl.text_task
    try:
        keys = causal.read_critical_keys(path, task, task.n)
        causal.check_keys_occur(task, keys, task.max_level)
    except (OSError, ValueError) as error:
        raise UsageError(f"--causal-map {path}: {error}") from None
    return dataclasses.replace(spec, rl=dataclasses.replace(spec.rl, causal_keys=keys))


def finetune(args) -> None:
    from critkl.commands import pretraining
    from critkl.runs import finetuning, models
    from critkl.runs.spec import prepare, run_sweep

    spec = spec_from(args)
    startup.start_jax(args, len(spec.runs()))  # before loading the model, which may compute
    pretraining.check_pretrained(spec.pretrained)
    model = models.load_pretrained(spec.pretrained)
    if args.causal_map:
        spec = _with_causal_map(spec, args.causal_map, model[0])
    try:
        prepare(spec, model[0])
    except ValueError as error:
        raise UsageError(str(error)) from None
    results = run_sweep(spec, args.run_dir, model=model, resume=args.resume,
                        print_fn=lambda line: print(line, flush=True))
    print(finetuning.markdown_summary(results))
    print(f"results: {Path(args.run_dir) / 'results.json'}; "
          f"tensorboard --logdir {Path(args.run_dir) / 'tensorboard'}")


def plot_sweep(args) -> None:
    from critkl.runs import finetuning, plots
    from critkl.infra.outputs import Output

    paths = [Path(d) / "results.json" for d in [args.run_dir, *(args.add or [])]]
    try:
        texts = [path.read_text() for path in paths]
        rl_config = json.loads((Path(args.run_dir) / "config.json").read_text())["rl"]
        if not type(rl_config["n"]) is type(rl_config["extra_digits"]) is int:
            raise ValueError("config.json's rl.n and rl.extra_digits must be integers")
        digits = rl_config["n"] + rl_config["extra_digits"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise UsageError(f"{args.run_dir} is not a sweep's run directory with results.json "
                         f"and config.json: {error}") from None
    loaded = []
    for path, text in zip(paths, texts):
        try:  # each file refused by its own name, before they are merged
            loaded.append(json.loads(text))
            finetuning.check_results(loaded[-1])
        except ValueError as error:
            raise UsageError(f"{path}: {error}") from None
    results = finetuning.merge(loaded) if args.add else loaded[0]
    results["summary"] = finetuning.summary(results)
    output = Output(Path(args.out) if args.out else Path(args.run_dir))
    baseline = args.baseline or STANDARD_KL
    try:
        plots.plot_sweep(digits, results, output)
        output.markdown("summary.md", finetuning.markdown_summary(results))
        settings = {run["setting"] for run in results["runs"]}
        if baseline in settings:
            output.markdown("differences.md", finetuning.markdown_differences(results, baseline))
        elif args.baseline:
            raise UsageError(f"--baseline {args.baseline!r} is not a setting of this sweep "
                             f"(allowed: {', '.join(sorted(settings))})")
    finally:
        output.close()
    print(finetuning.markdown_summary(results))
    print(f"saved {output.folder}: " + ", ".join(sorted(p.name for p in output.written)))
