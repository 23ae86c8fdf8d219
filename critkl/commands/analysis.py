"""`critkl analyze` and `critkl critical`: certainty and the causal critical-token map of a
pre-trained model."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from critkl.commands import flags
from critkl.commands.flags import UsageError
from critkl.config import CausalMapConfig
from critkl.loss_config import DEFAULT_KL_COEF

MAP_HELP = {
    "problems": "fixed problems, both operands N+1 digits",
    "temperature": "temperature of the sampled continuations (the RL temperature)",
    "beta": "exponent of the certainty in the KL weight w",
    "certainty_temperature": "temperature of the reference in the certainty",
    "forced_below": "force only decisions whose mean p(right) is below this",
    "batch": "continuations per sampler call",
    "seed": "seed of the problems and the sampled continuations"}


def add_parsers(commands, add_common) -> None:
    analyze_ = commands.add_parser(
        "analyze", help="certainty of a model on (N+1)-digit episodes: Table 1, coloured episodes")
    analyze_.add_argument("model", help="a shipped model name (e.g. mini-n3) or a pre-training "
                          "run dir")
    analyze_.add_argument("--episodes", type=int, default=50,
                          help="episodes for the statistics (default 50)")
    analyze_.add_argument("--shown", type=int, default=4,
                          help="episodes coloured and plotted (default 4)")
    analyze_.add_argument("--out", help="output folder (default runs/analyze-MODEL)")
    add_common(analyze_)
    analyze_.set_defaults(run=analyze)

    critical_ = commands.add_parser(
        "critical", help="causal critical-token map: force each uncertain decision right, then "
        "wrong, and compare the success of the continuations")
    critical_.add_argument("model", help="a shipped model name (e.g. mini-n3) or a pre-training "
                           "run dir")
    flags.add_field_flags(critical_, flags.fields(CausalMapConfig()), helps=MAP_HELP)
    critical_.add_argument("--kl-coef", type=float, default=DEFAULT_KL_COEF,
                           help="KL coefficient of the predicted optimum in the table "
                                f"(default {DEFAULT_KL_COEF:g})")
    critical_.add_argument("--level", type=int,
                           help="the level of the problems (default the task's RL level: N+1, "
                                "the paper's; N for path-star)")
    critical_.add_argument("--out", help="output folder (default runs/critical-MODEL)")
    add_common(critical_)
    critical_.set_defaults(run=critical)


def analyze(args) -> None:
    from critkl.analysis import certainty, report
    from critkl.infra.outputs import Output
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


def critical(args) -> None:
    import jax

    from critkl.analysis import causal
    from critkl.infra import files, memory_budget, provenance
    from critkl.runs import directory
    from critkl.runs.models import load_pretrained

    config, params = load_pretrained(args.model)
    try:
        settings = CausalMapConfig(**flags.given(args, flags.fields(CausalMapConfig())))
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
    length, vocabulary = task.max_episode_length(), config.model_config.vocab_size
    try:  # the problems' logits and log-probabilities, float32 [problems, L, vocabulary]
        memory_budget.check_index(settings.problems * length * vocabulary,
                                  f"--problems {settings.problems:,}", "lower --problems")
        memory_budget.check_fits(settings.problems * length * vocabulary * 12,
                                 f"--problems {settings.problems:,}", "lower --problems",
                                 jax.devices()[0])
        memory_budget.check_index(settings.batch * task.episode_limit(),
                                  f"--batch {settings.batch:,}", "lower --batch")
        memory_budget.check_fits(
            memory_budget.sampler_bytes(settings.batch, task.episode_limit(),
                                        config.model_config),
            f"--batch {settings.batch:,} (continuations per sampler call)", "lower --batch",
            jax.devices()[0])
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
