"""Every folder under results/ names the command that made it and the commit it was made at.

Each `results/NAME/run.json` holds a non-empty "command" and "commit" (strings); a folder of
several outputs made by different commands may list them under "outputs", each entry with
its own "command" and "commit". Every command written as `critkl SUBCOMMAND ...` must still
parse with today's command line (`critkl.cli.build_parser`).
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
from pathlib import Path

import pytest

from critkl import cli

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
FOLDERS = sorted(path for path in RESULTS.iterdir() if path.is_dir())


def load(folder: Path) -> dict:
    path = folder / "run.json"
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        pytest.fail(f"{path.relative_to(ROOT)} is not valid JSON: {error}")
    assert isinstance(record, dict), f"{path.relative_to(ROOT)} is not a JSON object"
    return record


def provenance(record: dict, where: str) -> list[str]:
    """Check "command" and "commit" of a record (and of its outputs); return every command."""
    for key in ("command", "commit"):
        value = record.get(key)
        assert isinstance(value, str) and value.strip(), f"{where}: no non-empty {key!r} string"
    commands = [record["command"]]
    then = record.get("then", [])
    commands += [then] if isinstance(then, str) else list(then)
    outputs = record.get("outputs", {})
    assert isinstance(outputs, dict), f"{where}: 'outputs' is not an object"
    for name, output in outputs.items():
        assert isinstance(output, dict), f"{where}: outputs[{name!r}] is not an object"
        commands += provenance(output, f"{where} outputs[{name!r}]")
    return commands


def test_results_has_folders():
    assert FOLDERS, "results/ has no folders"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda path: path.name)
def test_run_json(folder):
    where = f"results/{folder.name}/run.json"
    parser = cli.build_parser()
    for command in provenance(load(folder), where):
        assert isinstance(command, str), f"{where}: a command is not a string: {command!r}"
        words = shlex.split(command)
        if words and words[0] == "critkl":
            errors = io.StringIO()
            try:
                with contextlib.redirect_stderr(errors):
                    parser.parse_args(words[1:])
            except SystemExit:
                pytest.fail(f"{where}: {command!r} no longer parses: {errors.getvalue()}")


def test_the_commit_is_read_once_when_a_command_starts(monkeypatch):
    """A long run records the commit whose code it imported, not a later one: after
    `set_command`, git is not asked again."""
    import subprocess

    from critkl.infra import provenance

    monkeypatch.setattr(provenance, "_command", None)  # put back after the test
    provenance.commit.cache_clear()
    provenance.set_command(["sweep", "mini-n3"])
    first = provenance.commit()

    def no_git(*args, **kwargs):
        raise AssertionError("git was asked again")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert provenance.record() == {"command": "critkl sweep mini-n3", "commit": first,
                                   "machine": provenance.machine()}
    assert first != "unknown" and len(first.split("+")[0]) == 40


def test_the_machine_is_recorded_beside_the_commit():
    """Results name what computed them: the JAX versions, the backend and device kind this
    process uses, and the host processor."""
    import jax
    import jaxlib

    from critkl.infra import provenance

    machine = provenance.machine()
    assert machine["jax"] == jax.__version__ and machine["jaxlib"] == jaxlib.__version__
    assert machine["backend"] == jax.default_backend()
    assert machine["device"] == jax.devices()[0].device_kind
    assert isinstance(machine["processor"], str) and machine["processor"]
    extensions = machine["vector_extensions"].split()
    assert extensions == ["unknown"] or set(extensions) <= set(provenance.VECTOR_EXTENSIONS)
