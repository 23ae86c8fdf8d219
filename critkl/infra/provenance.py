"""What made a result: the command line, the commit of the code and the machine, recorded
beside it."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from pathlib import Path


@functools.cache
def commit() -> str:
    """The git commit of the critkl source ("unknown" outside a git checkout), with "+changes"
    when the working tree differs from it; read once per process (`set_command` reads it when
    a command starts): the code a process runs is what it imported, whatever is committed
    while it runs."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=here).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, cwd=here).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty.strip() else "")


_command: list[str] | None = None


def set_command(argv: list[str]) -> None:
    """The critkl arguments being run (`critkl.cli.main` sets them; default: sys.argv)."""
    global _command
    _command = list(argv)
    commit()


@functools.cache
def machine() -> dict[str, str]:
    """What ran the code: JAX and jaxlib versions, the backend, its device kind and the host's
    processor. XLA compiles for the host's instruction set, so the same command and commit
    give bit-identical results on one machine but can differ in the last bits on another
    (and sampled episodes then part ways)."""
    import jax
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "processor": _processor()}


def _processor() -> str:
    """The host CPU's model name (Linux's /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def record() -> dict:
    """{"command": the critkl command line being run, "commit": `commit()`,
    "machine": `machine()`}."""
    argv = sys.argv[1:] if _command is None else _command
    return {"command": " ".join(["critkl", *argv]), "commit": commit(), "machine": machine()}
