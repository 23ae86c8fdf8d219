"""The `critkl` command line: one subcommand per task of a run, each flag described.

The commands live in `critkl.commands` (pre-trained models, fine-tuning, analysis); this
module parses, starts JAX and turns every expected failure into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys

from critkl.commands import analysis, finetuning, pretraining
from critkl.commands.flags import UsageError
from critkl.commands.startup import start_jax
from critkl.tasks import registry

USAGE_ERROR = 2  # exit status for bad input
__all__ = ["UsageError", "USAGE_ERROR", "build_parser", "main"]


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


def _add_common_flags(parser: argparse.ArgumentParser, train: bool = False) -> None:
    """The flags of commands that read checkpoints; with train, also the multi-process ones."""
    if train:
        _add_distributed_flags(parser)
    parser.add_argument("--allow-undigested", action="store_true",
                        help="restore checkpoints that have no SHA-256 digest, saved before "
                        "critkl recorded them (default: such a checkpoint is refused as "
                        "unverifiable)")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("critkl")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="critkl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"critkl {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    pretraining.add_parsers(commands, _add_common_flags)
    finetuning.add_parsers(commands, lambda p: _add_common_flags(p, train=True))
    analysis.add_parsers(commands, _add_common_flags)
    experiment = commands.add_parser(
        "experiment", help="run one of the paper's experiments (or the main job: mini, tiny, paper)")
    experiment.add_argument("name", help="main, paper-setting, certainty, accuracy, levels, "
                            "critical, beta, mechanism, detectors, weightings, frontier, iso-learning; or a "
                            "scale (mini, tiny, paper) for the main job at that scale")
    experiment.add_argument("--scale", default="mini", help="tiny (tests), mini (CPU) or paper (GPU/TPU) (default mini)")
    experiment.add_argument("--task", default=registry.DEFAULT, choices=sorted(registry.TASKS),
                            help="the task of the models (default addition; the main job "
                            "takes any task, the other entries addition)")
    experiment.add_argument("--out", default="runs/experiments",
                            help="output folder (models pre-trained here are reused; default "
                            "runs/experiments)")
    _add_common_flags(experiment, train=True)
    experiment.set_defaults(run=_experiment)

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
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may follow the flags; anything else is refused
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
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
