"""Every folder under results/ names the command that made it and the commit it was made at.

Each `results/NAME/run.json` holds a non-empty "command" and "commit" (strings); a folder of
several outputs made by different commands may list them under "outputs", each entry with
its own "command" and "commit". Every command written as `critkl SUBCOMMAND ...` must name
a subcommand the CLI has. The subcommands are read from `build_parser` in critkl/cli.py by
parsing its source (the `add_parser` calls on the object `add_subparsers` returns), so the
test stays fast: importing critkl.cli imports JAX.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
CLI = ROOT / "critkl" / "cli.py"

FOLDERS = sorted(path for path in RESULTS.iterdir() if path.is_dir())


def cli_subcommands() -> set[str]:
    """Names passed to `X.add_parser(...)` in `build_parser`, where X = `parser.add_subparsers(...)`."""
    tree = ast.parse(CLI.read_text(), filename=str(CLI))
    builders = [node for node in tree.body
                if isinstance(node, ast.FunctionDef) and node.name == "build_parser"]
    assert len(builders) == 1, "critkl/cli.py has no single build_parser function"
    subparsers = set()
    for node in ast.walk(builders[0]):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute)
                and node.value.func.attr == "add_subparsers"):
            subparsers.update(target.id for target in node.targets if isinstance(target, ast.Name))
    assert subparsers, "build_parser does not call add_subparsers"
    names = set()
    for node in ast.walk(builders[0]):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_parser" and isinstance(node.func.value, ast.Name)
                and node.func.value.id in subparsers):
            first = node.args[0] if node.args else None
            assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                f"critkl/cli.py line {node.lineno}: add_parser without a literal name")
            names.add(first.value)
            for keyword in node.keywords:
                if keyword.arg == "aliases":
                    names.update(ast.literal_eval(keyword.value))
    return names


SUBCOMMANDS = cli_subcommands()


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


def test_the_cli_parser_is_found():
    assert SUBCOMMANDS, "no subcommands found in build_parser of critkl/cli.py"


def test_results_has_folders():
    assert FOLDERS, "results/ has no folders"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda path: path.name)
def test_run_json(folder):
    where = f"results/{folder.name}/run.json"
    for command in provenance(load(folder), where):
        assert isinstance(command, str), f"{where}: a command is not a string: {command!r}"
        words = command.split()
        if words and words[0] == "critkl":
            assert len(words) > 1 and words[1] in SUBCOMMANDS, (
                f"{where}: {command!r} names no critkl subcommand; "
                f"they are {sorted(SUBCOMMANDS)}")
