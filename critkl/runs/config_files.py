"""Config files and `key=value` overrides, as JAX users know them from MaxText and big_vision.

A config file is TOML or JSON (a run directory's config.json is one); overrides name a field
by its dotted path (`rl.episodes=64`, `base.loss.kl_coef=0.5`, `grid.beta=0,150`,
`seeds=0,1,2`) and are parsed by the type of the value they replace. Both give nested dicts
that `critkl.runs.spec.build` turns into typed configs.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

SUFFIXES = (".toml", ".json")


def read(path: str | Path) -> dict[str, Any]:
    """The table of a .toml or .json file; ValueError in one line naming the file."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: a config file is {' or '.join(SUFFIXES)}, not "
                         f"{path.suffix or 'a file without a suffix'!r}")
    try:
        text = path.read_text()
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except OSError as error:
        raise ValueError(f"{path}: cannot read it ({error.strerror or error})") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid {path.suffix[1:].upper()} ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a table of settings, got {type(values).__name__}")
    return values


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s values, nested tables merged key by key."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """`key.path=value` as a nested dict, the value parsed like the one at that path of
    `defaults` (a nested dict of default values): numbers, true/false, comma-separated lists;
    a grid entry (`grid.NAME`) is a list of numbers. ValueError naming the key and the
    allowed keys where the path is unknown."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{text!r}: an override is key=value, e.g. rl.episodes=64")
    path = key.strip().split(".")
    if path[0] == "grid" and len(path) == 2:
        return {"grid": {path[1]: _parse_list(raw, float, key)}}
    node = defaults
    for depth, part in enumerate(path):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(path[:depth]) or "the config"
            allowed = ", ".join(node) if isinstance(node, dict) else "none (not a table)"
            raise ValueError(f"{key}: unknown key {part!r} in {where} (allowed: {allowed})")
        node = node[part]
    value = _parse_like(raw.strip(), node, key)
    for part in reversed(path):
        value = {part: value}
    return value


def _parse_like(raw: str, default: Any, key: str) -> Any:
    if isinstance(default, dict):
        raise ValueError(f"{key} is a table: set one of its keys ({', '.join(default)})")
    if isinstance(default, (list, tuple)):
        kind = type(default[0]) if default else str
        return _parse_list(raw, kind, key)
    return _parse_scalar(raw, type(default), key)


def _parse_list(raw: str, kind: type, key: str) -> list:
    return [_parse_scalar(item.strip(), kind, key) for item in raw.split(",") if item.strip()]


def _parse_scalar(raw: str, kind: type, key: str) -> Any:
    if kind is bool:
        words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if raw.lower() not in words:
            raise ValueError(f"{key}={raw!r} is not a boolean (allowed: true, false)")
        return words[raw.lower()]
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ValueError(f"{key}={raw!r} is not {'an integer' if kind is int else 'a number'}"
                             ) from None
    return raw
