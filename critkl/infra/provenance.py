"""What made a result: the command line and the commit of the code, recorded beside it."""

from __future__ import annotations

import functools
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


def record() -> dict[str, str]:
    """{"command": the critkl command line being run, "commit": `commit()`}."""
    argv = sys.argv[1:] if _command is None else _command
    return {"command": " ".join(["critkl", *argv]), "commit": commit()}
