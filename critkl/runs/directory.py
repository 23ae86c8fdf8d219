"""What every training run shares around its jitted core: the run directory (config.json,
written once by process 0; orbax checkpoints), starting fresh or resuming the same run, and
the progress line.

`open_run` refuses a fresh start in a directory that holds checkpoints and a resume whose
settings differ from config.json (except `may_differ`: settings that only change what is
logged), so a run directory always holds one run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax

from critkl.infra import checkpoint


def open_run(run_dir: str | os.PathLike, config: dict | None, *, resume: bool,
             may_differ: tuple[str, ...] = (), defaults: dict | None = None,
             keep: int = 3) -> checkpoint.Checkpointer:
    """The checkpointer of a fresh run (config.json written) or of a resumed one (its
    config.json compared with `config`; settings added since, at their `defaults`, are
    the same), keeping the last `keep` checkpoints. `config` None: nothing is written or
    compared."""
    run_dir = Path(run_dir)
    if resume and config is not None:
        checkpoint.check_same_config(run_dir, config, may_differ, defaults)
    checkpointer = checkpoint.Checkpointer(run_dir, max_to_keep=keep, create=not resume)
    if not resume:  # every process checks, so that all stop together
        if checkpoint.latest_checkpoint_step(run_dir) is not None:
            checkpointer.close()
            raise checkpoint.CheckpointError(
                f"{run_dir} already holds checkpoints: pass --resume to continue that run, "
                "or choose another run directory.")
        run_dir.mkdir(parents=True, exist_ok=True)
        if config is not None and jax.process_index() == 0:
            checkpoint.save_config(run_dir, config)
    return checkpointer


def format_seconds(seconds: float) -> str:
    """3725.0 -> "1h02m"; 125.0 -> "2m05s"."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def timing(elapsed: float, done: float, total: float) -> str:
    """"elapsed 1m05s  ETA 3m15s" after `done` of `total` units of work in `elapsed` s."""
    eta = (total - done) * elapsed / done if done > 0 else float("nan")
    return (f"elapsed {format_seconds(elapsed)}  "
            f"ETA {format_seconds(eta) if eta == eta else '?'}")


class Progress:
    """A progress line after each unit of a long stage: "  label 3/10 (what)  elapsed 1m05s
    ETA 2m32s". Call it as progress(done, total) or progress(done, total, what)."""

    def __init__(self, label: str, print_fn=print):
        self.label, self.print_fn, self.started = label, print_fn, time.perf_counter()

    def __call__(self, done: int, total: int, what: str = "") -> None:
        detail = f" ({what})" if what else ""
        self.print_fn(f"  {self.label} {done}/{total}{detail}  "
                      + timing(time.perf_counter() - self.started, done, total))
