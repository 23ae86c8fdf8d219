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
    """What ran the code: JAX and jaxlib versions, the backend, its device kind, the host's
    processor and its vector extensions. XLA compiles for the host's instruction set, so the
    same command and commit give bit-identical results on one machine but can differ in the
    last bits on another (and sampled episodes then part ways)."""
    import jax
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "processor": _processor(), "vector_extensions": _vector_extensions()}


# The host CPU's vector instruction sets that XLA:CPU compiles for (Linux's /proc/cpuinfo
# flags): two machines that differ here can round differently.
VECTOR_EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                     "avx512_vnni", "avx512_bf16", "amx_tile")


def _cpuinfo(field: str) -> str | None:
    """The first value of `field` in Linux's /proc/cpuinfo (None elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _processor() -> str:
    """The host CPU's model name, else what `platform` knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _vector_extensions() -> str:
    """The `VECTOR_EXTENSIONS` the host CPU has, space-separated ("unknown" off Linux)."""
    flags = _cpuinfo("flags")
    if flags is None:
        return "unknown"
    return " ".join(name for name in VECTOR_EXTENSIONS if name in flags.split())


def record() -> dict:
    """{"command": the critkl command line being run, "commit": `commit()`,
    "machine": `machine()`}."""
    argv = sys.argv[1:] if _command is None else _command
    return {"command": " ".join(["critkl", *argv]), "commit": commit(), "machine": machine()}
